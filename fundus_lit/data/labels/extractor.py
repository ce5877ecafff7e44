"""Report labels: a rule-based extractor from free-text fundus reports to vocabulary labels.

Report datasets (ViLReF-style) pair each image with a report and, often, no label list. The
extractor turns a report into a multi-hot vector over a vocabulary of knowledge-dictionary
categories, so label-aware objectives can run on report data. It is deliberately small and
data-driven: a mention is a name or alias of a vocabulary category (plus :data:`SYNONYMS`), and
what a report says about it is decided by cue words in the same clause.

Rules, in order:

* Sections and sentences. Eye prefixes (``left eye:``, ``right eye:``, ``both eyes:``, ``OD:``,
  ``OS:``, ``OU:``, colon or dash) start a new section; sentences end at ``. ! ? ;`` and line
  breaks. A label affirmed in any section is positive (one eye affirmed, the other negated: the
  report is positive).
* Words. Lower case; every non-alphanumeric character separates words (so hyphens behave as in
  :func:`category_key`); British spellings and plurals are folded (``haemorrhages`` ==
  ``hemorrhage``) on both the report and the dictionary side; ``nonproliferative`` is split
  like ``non proliferative``; "Dr. Smith" is a doctor, not the alias "dr". Mentions are
  whole-word phrases, longest first, so ``proliferative diabetic retinopathy`` never also fires
  ``diabetic retinopathy`` and ``mild non-proliferative diabetic retinopathy`` is the mild
  grade, not NPDR.
* Scope. A clause ends at the sentence end and at ``but``, ``however``, ``although``,
  ``except``, ``apart from``, ``other than``, ``otherwise`` and the like. Commas do *not* end a
  clause, because negated lists ("no haemorrhages, exudates or new vessels") are the commonest
  negation in reports; the cost is that "no haemorrhages, drusen present" negates the drusen.
  A preceding cue ("no", "without", "negative for", "possible", ...) covers every later mention
  of the clause; a trailing cue ("absent", "not seen", "ruled out", "cannot be excluded", ...)
  covers the earlier mentions of its comma-separated segment only ("drusen present,
  haemorrhages absent"). Negation beats uncertainty; a cue that is part of a longer mention or
  cue is not a cue ("no dr", "possible glaucoma", "cannot exclude").
* "rule out X" is a request, so it marks X uncertain; "X ruled out" negates it.
* Cup-to-disc ratio. A written ratio ("CDR 0.8", "cup:disc ratio of 0.3", "C/D 0.75") is read
  as the finding it states: :data:`LARGE_CDR` or more is a large cup (*optic disc cupping*),
  below :data:`NORMAL_CDR_BELOW` a normal cup; a borderline ratio is left as written.
* Normal remarks. :data:`NORMAL_REMARKS` ("small cup", "physiological cupping", "foveal reflex
  present") describe a healthy structure: they are no label, but they are matched like mentions,
  so "physiological cupping" is not *cupping*, and their segment is not unmapped.
* Absence and suspicion classes. A dictionary phrase made of a cue and another category's phrase
  ("no diabetic retinopathy", "not glaucoma", "possible glaucoma") is an affirmed class of its
  own; it also negates (or marks uncertain) the category it names, and a negated (uncertain)
  category gives its absence (suspicion) class when both are in the vocabulary, so "no signs of
  glaucoma" and "no glaucoma" label alike.
* ``normal`` is residual: dropped from a section that affirms any other finding, so "normal
  disc, drusen at the macula" is drusen only. Absence classes do not count as findings.
* Unmapped. A comma segment with content words but no mention, no negation and no
  normal/administrative word ("unremarkable", "follow up") is reported in
  :attr:`Extraction.unmapped`, so the most frequent ones show which phrasing the dictionary
  misses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fundus_lit.data.labels.phrases import (
    AMBIGUOUS_ALIASES,
    BOILERPLATE,
    CUES,
    EYE_RE,
    NEG,
    NORMAL_REMARKS,
    SENTENCE_RE,
    STOP,
    STOPWORDS,
    SYNONYMS,
    TITLE_RE,
    UNC,
    WORD_RE,
    fold_word,
    prepare_text,
    report_words,
)
from fundus_lit.data.labels.vocabulary import label_vocabulary, multi_hot, vocabulary_of
from fundus_lit.knowledge import KnowledgeBase, category_key

__all__ = ["Extraction", "LabelExtractor", "label_vocabulary", "multi_hot"]


@dataclass(frozen=True)
class Extraction:
    """What one report says: canonical label names by status, in vocabulary order."""

    positive: tuple[str, ...] = ()
    negated: tuple[str, ...] = ()
    uncertain: tuple[str, ...] = ()
    unmapped: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Mention:
    category: str
    cue: str | None = None  # the phrase holds a cue: "no dr", "possible glaucoma", "... suspect"
    base: str | None = None  # the category the rest of such a phrase names
    opens: bool = False  # the cue leads the phrase, so it also covers the mentions after it


@dataclass(frozen=True)
class _Cue:
    kind: str
    backward: bool
    forward: bool


@dataclass(frozen=True)
class _Remark:
    """A :data:`NORMAL_REMARKS` phrase: no label, no cue."""


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    item: _Mention | _Cue | _Remark | None  # None: a comma


class LabelExtractor:
    """Rule-based report labeller over a vocabulary of knowledge categories (rules: module doc).

    Args:
        vocabulary: Label names (dictionary names or aliases); all dictionary categories if None.
        knowledge: Extra knowledge YAML files over the built-in dictionary.
        uncertain: Whether uncertain mentions count as positive labels or are left out.
    """

    def __init__(
        self,
        vocabulary: Sequence[str] | None = None,
        knowledge: list[str] | None = None,
        uncertain: Literal["positive", "negative"] = "positive",
    ) -> None:
        if uncertain not in ("positive", "negative"):
            raise ValueError(f"uncertain must be 'positive' or 'negative', got {uncertain!r}")
        self.knowledge = KnowledgeBase.load(knowledge or [])
        self.vocabulary: list[str] = vocabulary_of(self.knowledge, vocabulary)
        self.uncertain = uncertain
        self._order = {name: i for i, name in enumerate(self.vocabulary)}
        self._table, self._longest = self._build_table()
        self._absence = {m.base: m.category for m in self._table.values() if _is(m, NEG)}
        self._suspicion = {m.base: m.category for m in self._table.values() if _is(m, UNC)}
        self._normal = next((n for n in self.vocabulary if category_key(n) == "normal"), None)
        self._not_findings = {self._normal, *self._absence.values()}

    def _build_table(self) -> tuple[dict[tuple[str, ...], _Mention | _Cue | _Remark], int]:
        """Phrases of the vocabulary's categories, then synonyms, then normal remarks and cues;
        the first claim of a folded phrase wins, so the dictionary beats the synonym table and
        mentions beat remarks and cues."""
        phrases: dict[tuple[str, ...], str] = {}
        for name in self.vocabulary:
            cat = self.knowledge[name]
            for phrase in (cat.name, *cat.aliases):
                if category_key(phrase) not in AMBIGUOUS_ALIASES:
                    phrases.setdefault(report_words(phrase), cat.name)
        for phrase, name in SYNONYMS.items():
            if name in self._order:
                phrases.setdefault(report_words(phrase), name)
        cues = {report_words(c): _Cue(*spec) for c, spec in CUES.items()}
        table: dict[tuple[str, ...], _Mention | _Cue | _Remark] = dict(cues)
        table.update(dict.fromkeys(map(report_words, NORMAL_REMARKS), _Remark()))
        for words, name in phrases.items():
            table[words] = self._mention(words, name, phrases, cues)
        return table, max(len(w) for w in table)

    @staticmethod
    def _mention(
        words: tuple[str, ...],
        name: str,
        phrases: dict[tuple[str, ...], str],
        cues: dict[tuple[str, ...], _Cue],
    ) -> _Mention:
        for n in range(len(words) - 1, 0, -1):
            for cue, rest, opens in (
                (cues.get(words[:n]), words[n:], True),
                (cues.get(words[-n:]), words[:-n], False),
            ):
                if cue and cue.kind != STOP and (cue.forward if opens else cue.backward):
                    base = phrases.get(rest)
                    return _Mention(name, cue.kind, base if base != name else None, opens)
        return _Mention(name)

    def _scan(self, words: Sequence[str]) -> list[_Match]:
        out: list[_Match] = []
        i = 0
        while i < len(words):
            if words[i] == ",":
                out.append(_Match(i, i + 1, None))
                i += 1
                continue
            for n in range(min(self._longest, len(words) - i), 0, -1):
                item = self._table.get(tuple(words[i : i + n]))
                if item is not None:
                    out.append(_Match(i, i + n, item))
                    i += n
                    break
            else:
                i += 1
        return out

    def _assess(self, matches: list[_Match]) -> list[tuple[str, str]]:
        """(category, status) of every mention and derived class of one sentence."""
        out: list[tuple[str, str]] = []
        clause: list[tuple[_Match, int]] = []  # matches of the current clause, with segment
        for match in [*matches, _Match(-1, -1, _Cue(STOP, False, False))]:
            item = match.item
            if isinstance(item, _Cue) and item.kind == STOP:
                out += [s for m, seg in clause for s in self._status(m, seg, clause)]
                clause = []
            else:
                clause.append((match, clause[-1][1] + (item is None) if clause else 0))
        return out

    def _status(
        self, match: _Match, seg: int, clause: list[tuple[_Match, int]]
    ) -> list[tuple[str, str]]:
        item = match.item
        if not isinstance(item, _Mention):
            return []
        kinds = set()
        for other, other_seg in clause:
            cue = other.item
            if isinstance(cue, _Mention) and cue.opens:
                cue = _Cue(cue.cue, False, True)
            if not isinstance(cue, _Cue) or other is match:
                continue
            if (cue.forward and other.end <= match.start) or (
                cue.backward and other.start >= match.end and other_seg == seg
            ):
                kinds.add(cue.kind)
        if item.cue is not None and (item.cue == NEG or NEG not in kinds):
            status = "negative" if item.cue == NEG else "uncertain"
            return [(item.category, "positive")] + ([(item.base, status)] if item.base else [])
        if NEG in kinds:
            derived = self._absence.get(item.category)
            return [(item.category, "negative")] + ([(derived, "positive")] if derived else [])
        if UNC in kinds:
            derived = self._suspicion.get(item.category)
            return [(item.category, "uncertain")] + ([(derived, "positive")] if derived else [])
        return [(item.category, "positive")]

    def _unmapped(self, sentence: str, matches: list[_Match]) -> list[str]:
        """Mention-free, finding-like comma segments of one sentence, as written (lower case)."""
        if any(isinstance(m.item, _Cue) and m.item.kind == NEG for m in matches):
            return []
        text = prepare_text(sentence)
        spans = [m.span() for m in WORD_RE.finditer(text)]
        out = []
        bounds = [-1] + [m.start for m in matches if m.item is None] + [len(spans)]
        for lo, hi in zip(bounds, bounds[1:]):
            if any(isinstance(m.item, (_Mention, _Remark)) and lo < m.start < hi for m in matches):
                continue
            words = [fold_word(text[a:b]) for a, b in spans[lo + 1 : hi]]
            content = [w for w in words if len(w) > 2 and w.isalpha() and w not in STOPWORDS]
            if content and not BOILERPLATE.intersection(words) and lo + 1 < hi:
                out.append(" ".join(text[spans[lo + 1][0] : spans[hi - 1][1]].split()))
        return out

    def extract(self, report: str) -> Extraction:
        """Labels of one report by status; an empty report is an empty extraction."""
        best: dict[str, str] = {}
        unmapped: dict[str, None] = {}
        rank = {"positive": 2, "uncertain": 1, "negative": 0}
        for section in EYE_RE.split(TITLE_RE.sub("doctor", report or "")):
            found: list[tuple[str, str]] = []
            for sentence in SENTENCE_RE.split(section):
                words = report_words(sentence)
                matches = self._scan(words)
                found += self._assess(matches)
                unmapped.update(dict.fromkeys(self._unmapped(sentence, matches)))
            for name, status in self._drop_normal(found):
                if rank[status] > rank.get(best.get(name, ""), -1):
                    best[name] = status
        by = {
            s: tuple(sorted((n for n in best if best[n] == s), key=self._order.get)) for s in rank
        }
        return Extraction(by["positive"], by["negative"], by["uncertain"], tuple(unmapped))

    def _drop_normal(self, found: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``normal`` only where nothing else is affirmed: "normal disc" beside a finding is
        a remark on one structure, not the verdict on the eye."""
        if all(s == "negative" or n in self._not_findings for n, s in found):
            return found
        return [(n, s) for n, s in found if n != self._normal or s == "negative"]

    def labels(self, report: str) -> tuple[float, ...]:
        """Multi-hot over :attr:`vocabulary`: positives, plus uncertain ones unless
        ``uncertain="negative"``."""
        return self.vector(self.extract(report))

    def vector(self, found: Extraction) -> tuple[float, ...]:
        """:meth:`labels` of an extraction already made (callers that need both)."""
        names = found.positive + (found.uncertain if self.uncertain == "positive" else ())
        return multi_hot(names, self.vocabulary)


def _is(mention: _Mention | _Cue | _Remark, kind: str) -> bool:
    return isinstance(mention, _Mention) and mention.cue == kind and mention.base is not None

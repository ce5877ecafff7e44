"""Report labels: the label vocabulary and a rule-based extractor from free-text fundus reports.

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

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from fundus_lit.knowledge import KnowledgeBase, category_key

#: Frequent report phrasing the dictionary lacks: phrase -> dictionary category. Applied only when
#: the category is in the vocabulary and no dictionary name or alias already claims the phrase.
SYNONYMS: dict[str, str] = {
    "tessellated": "tessellation",  # "the fundus is tessellated"
    "leopard fundus": "tessellation",  # common translation of tessellated fundus
    "cupping": "optic disc cupping",  # "cupping of the disc", "glaucomatous cupping"
    "photocoagulation": "laser scars",  # "laser photocoagulation", "s/p photocoagulation"
    "cotton wool": "cotton wool spots",  # "cotton-wool patches"
    "retinal bleeding": "hemorrhages",
    "swollen disc": "optic disc edema",
    "hypertensive changes": "hypertensive retinopathy",
    "tiny red dot": "microaneurysms",  # "tiny red dots, consistent with microaneurysms"
    "small red dot": "microaneurysms",
    # a thinning neuroretinal rim is the enlarging cup seen from the rim: one glaucomatous change
    "neuroretinal rim thinning": "optic disc cupping",
    "thinning of the neuroretinal rim": "optic disc cupping",
    "thin neuroretinal rim": "optic disc cupping",
    "rim thinning": "optic disc cupping",
}
#: Phrases that describe a healthy structure. A small or physiological cup is the normal disc,
#: not a label of its own: mapping it to ``normal`` would state a verdict on the whole eye from
#: one structure (``normal`` is residual, and a restricted vocabulary may leave out the finding
#: that should drop it), and to ``no glaucoma`` would infer a diagnosis from a sign. They are
#: whole phrases rather than :data:`_BOILERPLATE` words because single words are not safe:
#: "well perfused" is normal, "poorly perfused" is ischaemia; "foveal reflex present" is normal,
#: "dull foveal reflex" is not.
NORMAL_REMARKS: tuple[str, ...] = (
    "small cup",
    "small optic cup",
    "physiological cup",
    "physiologic cup",
    "physiological cupping",
    "physiologic cupping",
    "foveal reflex present",
    "foveal reflex seen",
    "foveal reflex visible",
    "well perfused",
    "well defined margin",
)
#: Cup-to-disc ratio bands: 0.7 or more is the usual screening threshold of a large cup, and
#: below 0.6 is within the normal range. A ratio in between is borderline, a call the report's
#: other words must make, so it is left as written and stays visible among unmapped phrases.
LARGE_CDR, NORMAL_CDR_BELOW = Decimal("0.7"), Decimal("0.6")
#: Dictionary aliases not matched in running text: "no fundus" (of "no fundus image") is the
#: start of "no fundus abnormality" far more often than a verdict on the photograph.
AMBIGUOUS_ALIASES = frozenset({"no fundus"})


def _phrases(text: str, sep: str = "|") -> list[str]:
    """The entries of a separated table string (keeps the word tables compact)."""
    return text.split(sep)


# cue phrase -> (kind, covers earlier mentions, covers later mentions)
_NEG, _UNC, _STOP = "neg", "unc", "stop"
_CUES: dict[str, tuple[str, bool, bool]] = {
    **dict.fromkeys(
        _phrases(
            "no|not|without|absence of|negative for|free of|no sign of|no evidence of"
            "|nor|neither|lack of|never|denies|rules out"
        ),
        (_NEG, False, True),
    ),
    **dict.fromkeys(
        _phrases(
            "absent|not seen|not present|not detected|not observed|not identified|not noted"
            "|not visible|not found|ruled out|excluded|negative|resolved"
        ),
        (_NEG, True, False),
    ),
    **dict.fromkeys(
        _phrases(
            "possible|possibly|suspected|suspect|suspicious|suspicious for|suspicious of"
            "|suspicion of|suspicion|probable|probably|likely|may|may be|might|could be|query"
            "|questionable|equivocal|borderline|?|rule out|to rule out|r o|cannot exclude"
            "|can not exclude|cannot rule out|can not rule out"
        ),
        (_UNC, True, True),
    ),
    # what comes before "suggestive of" is the evidence, stated as fact: "CDR 0.8 suggestive of
    # glaucoma" is a large cup and uncertain glaucoma
    "suggestive of": (_UNC, False, True),
    **dict.fromkeys(
        _phrases(
            "cannot be excluded|can not be excluded|not excluded|not ruled out"
            "|cannot be ruled out|can not be ruled out"
        ),
        (_UNC, True, False),
    ),
    **dict.fromkeys(
        _phrases(
            "but|however|although|though|whereas|while|except|except for|apart from|aside from"
            "|other than|besides|otherwise"
        ),
        (_STOP, False, False),
    ),
}
# words that make a mention-free segment normal or administrative boilerplate, not a finding
_BOILERPLATE = frozenset(
    _phrases(
        "normal unremarkable healthy clear intact sharp pink flat attached good regular stable"
        " unchanged wnl nad nil follow review refer referral recommend recommended advise advised"
        " repeat appointment month week year annual screening clinic ophthalmologist",
        " ",
    )
)
_STOPWORDS = frozenset(
    _phrases(
        "the and for with are was were been there this that these those its from both left right"
        " eye fundus retina retinal photograph image picture show showing shown seen noted present"
        " visible observed found appear appears also some few several area region side which has"
        " have had into onto over under near around"
        " disc optic macula fovea vessel",  # a structure named alone states no finding
        " ",
    )
)

_EYE = re.compile(r"\b(?:(?:left|right|both)\s+eyes?|od|os|ou)\s*[:\-]", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|(?<=;)|\n+")
_WORD = re.compile(r"[a-z0-9]+|[?,]")
_TITLE = re.compile(r"\bDr\.(?=\s+[A-Z][a-z])")  # "Dr. Smith" is a doctor, not retinopathy
_PREFIX = re.compile(
    r"\b(non|pre|intra)(?=(?:proliferative|exudative|neovascular|retinal|diabetic|glaucomatous)\b)"
)
# "CDR 0.8", "vertical cup-to-disc ratio of 0.75", "C/D 0.3", "cup:disc ratio = .4"
_CDR = re.compile(
    r"(?<![a-z0-9])(?:v?cdr|c\s*[/:]\s*d(?:\s+ratio)?|cd\s+ratio"
    r"|cup\s*[-:/]?\s*(?:to\s*-?\s*)?disc(?:\s+ratio)?)"
    r"(?:\s*(?:[:=~]|of|is|was|about|approximately|around)(?![a-z]))*\s*"
    r"(\d*\.\d+|[01](?![.\d]))"
)
_SPELLING = (("aem", "em"), ("oedem", "edem"), ("isation", "ization"), ("fibre", "fiber"))
_SPELLING += (("naev", "nev"), ("centre", "center"), ("tesselat", "tessellat"))


def _fold(word: str) -> str:
    """One spelling per word, so dictionary and report need not agree on British/US or number."""
    for old, new in _SPELLING:
        word = word.replace(old, new)
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _cdr_phrase(match: re.Match[str]) -> str:
    """A ratio as the words for its cup: "large cup to disc ratio" is a dictionary alias of
    optic disc cupping and "small cup" a normal remark, so the usual rules take it from there.
    Decimal, so a ratio on a band edge compares as written rather than as a binary float."""
    value = Decimal(match.group(1))
    if value >= LARGE_CDR:
        return f"large cup to disc ratio {match.group(1)}"
    if value < NORMAL_CDR_BELOW:
        return f"small cup to disc ratio {match.group(1)}"
    return match.group(0)


def _prepare(text: str) -> str:
    text = _TITLE.sub("doctor", text).lower().replace("can't", "cannot").replace("n't", " not")
    text = _CDR.sub(_cdr_phrase, text)
    return _PREFIX.sub(r"\1 ", re.sub(r"'s\b|'", "", text))


def _words(text: str) -> tuple[str, ...]:
    return tuple(_fold(w) for w in _WORD.findall(_prepare(text)))


def label_vocabulary(
    names: list[str] | None = None, knowledge: list[str] | None = None
) -> list[str]:
    """The ordered label names of the multi-hot vectors: canonical dictionary names, so a label
    list written with aliases ("AMD") gives the same columns as one written with names."""
    return _vocabulary(KnowledgeBase.load(knowledge or []), names)


def _vocabulary(kb: KnowledgeBase, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return kb.names()
    out: dict[str, str] = {}  # canonical name -> the name the user wrote
    for name in names:
        cat = kb.get(name)
        if cat is None:
            raise ValueError(
                f"label {name!r} is neither a category nor an alias of the knowledge dictionary"
            )
        if cat.name in out:
            raise ValueError(
                f"labels {out[cat.name]!r} and {name!r} are the same category {cat.name!r}"
            )
        out[cat.name] = name
    return list(out)


def multi_hot(labels: Iterable[str], vocabulary: Sequence[str]) -> tuple[float, ...]:
    """The 0/1 vector of ``labels`` over ``vocabulary``; an unknown label is an error rather than
    a silently dropped column."""
    index = {category_key(name): i for i, name in enumerate(vocabulary)}
    out = [0.0] * len(vocabulary)
    for label in labels:
        i = index.get(category_key(label))
        if i is None:
            shown = ", ".join(vocabulary[:8]) + (", ..." if len(vocabulary) > 8 else "")
            raise KeyError(
                f"label {label!r} is not in the label vocabulary "
                f"({len(vocabulary)} labels: {shown})"
            )
        out[i] = 1.0
    return tuple(out)


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
        self.vocabulary: list[str] = _vocabulary(self.knowledge, vocabulary)
        self.uncertain = uncertain
        self._order = {name: i for i, name in enumerate(self.vocabulary)}
        self._table, self._longest = self._build_table()
        self._absence = {m.base: m.category for m in self._table.values() if _is(m, _NEG)}
        self._suspicion = {m.base: m.category for m in self._table.values() if _is(m, _UNC)}
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
                    phrases.setdefault(_words(phrase), cat.name)
        for phrase, name in SYNONYMS.items():
            if name in self._order:
                phrases.setdefault(_words(phrase), name)
        cues = {_words(c): _Cue(*spec) for c, spec in _CUES.items()}
        table: dict[tuple[str, ...], _Mention | _Cue | _Remark] = dict(cues)
        table.update(dict.fromkeys(map(_words, NORMAL_REMARKS), _Remark()))
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
                if cue and cue.kind != _STOP and (cue.forward if opens else cue.backward):
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
        for match in [*matches, _Match(-1, -1, _Cue(_STOP, False, False))]:
            item = match.item
            if isinstance(item, _Cue) and item.kind == _STOP:
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
        if item.cue is not None and (item.cue == _NEG or _NEG not in kinds):
            status = "negative" if item.cue == _NEG else "uncertain"
            return [(item.category, "positive")] + ([(item.base, status)] if item.base else [])
        if _NEG in kinds:
            derived = self._absence.get(item.category)
            return [(item.category, "negative")] + ([(derived, "positive")] if derived else [])
        if _UNC in kinds:
            derived = self._suspicion.get(item.category)
            return [(item.category, "uncertain")] + ([(derived, "positive")] if derived else [])
        return [(item.category, "positive")]

    def _unmapped(self, sentence: str, matches: list[_Match]) -> list[str]:
        """Mention-free, finding-like comma segments of one sentence, as written (lower case)."""
        if any(isinstance(m.item, _Cue) and m.item.kind == _NEG for m in matches):
            return []
        text = _prepare(sentence)
        spans = [m.span() for m in _WORD.finditer(text)]
        out = []
        bounds = [-1] + [m.start for m in matches if m.item is None] + [len(spans)]
        for lo, hi in zip(bounds, bounds[1:]):
            if any(isinstance(m.item, (_Mention, _Remark)) and lo < m.start < hi for m in matches):
                continue
            words = [_fold(text[a:b]) for a, b in spans[lo + 1 : hi]]
            content = [w for w in words if len(w) > 2 and w.isalpha() and w not in _STOPWORDS]
            if content and not _BOILERPLATE.intersection(words) and lo + 1 < hi:
                out.append(" ".join(text[spans[lo + 1][0] : spans[hi - 1][1]].split()))
        return out

    def extract(self, report: str) -> Extraction:
        """Labels of one report by status; an empty report is an empty extraction."""
        best: dict[str, str] = {}
        unmapped: dict[str, None] = {}
        rank = {"positive": 2, "uncertain": 1, "negative": 0}
        for section in _EYE.split(_TITLE.sub("doctor", report or "")):
            found: list[tuple[str, str]] = []
            for sentence in _SENTENCE.split(section):
                words = _words(sentence)
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

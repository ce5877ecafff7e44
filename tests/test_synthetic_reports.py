"""Synthetic fundus reports: determinism, variety, recoverable labels, the report CSV, the source.

The label checks use their own small matcher (dictionary aliases, longest match first, a
negation cue negating the rest of its clause) so that they do not depend on the project's
label extractor: the reports must be right by construction, whatever extracts from them.
"""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

import pytest

from fundus_lit.data.sources import SyntheticSource
from fundus_lit.knowledge import KnowledgeBase, category_key
from fundus_lit.synthetic import (
    CATEGORIES,
    FundusSynth,
    SynthReport,
    report_details,
    synthetic_report,
    write_flair_dataset,
    write_report_dataset,
)
from fundus_lit.synthetic.reports import IMPLIED_BY, IMPRESSION_NAMES

N = 300
# Finding wordings that imply a category when the impression leaves it out; written here
# independently of the generator's phrase tables.
CUES = {
    "proliferative diabetic retinopathy": r"new vessels|neovasculari[sz]ation|\bnv[de]\b",
    "glaucoma": r"enlarged optic cup|increased cupping|large cup|(cdr|ratio) (of )?0\.[6-9]",
    "age related macular degeneration": r"\bdrusen\b",
    "retinal vein occlusion": r"\b(flame|splinter|nerve fib(re|er) layer) (shaped )?ha?emorrhages",
    "pathologic myopia": r"tessell?at|tigroid",
}
HEDGE_WORDS = r"possible|probable|likely|suspicious|suggestive|cannot be excluded|\?"
NEGATION = re.compile(r"\b(no|not|without)\b")
CLAUSE_END = re.compile(r"[.;](?!\d)")  # "CDR 0.35" is not a sentence end


@pytest.fixture(scope="module")
def synth() -> FundusSynth:
    return FundusSynth(seed=5, size=48, sites=2)


@pytest.fixture(scope="module")
def reports(synth: FundusSynth) -> list[SynthReport]:
    return [report_details(synth, i) for i in range(N)]


@pytest.fixture(scope="module")
def matcher() -> tuple[re.Pattern[str], dict[str, str]]:
    """One alternation of every dictionary name and alias, longest first, so that
    "moderate non proliferative diabetic retinopathy" is never read as "proliferative ..."."""
    owner = {key: cat.name for cat in KnowledgeBase.load() for key in cat.all_keys()}
    keys = sorted(owner, key=len, reverse=True)
    alternation = "|".join(re.escape(k) for k in keys)
    return re.compile(rf"(?<![a-z0-9])(?:{alternation})(?![a-z0-9])"), owner


def _affirmed(text: str) -> str:
    """The text outside negation scopes: a cue negates the rest of its clause."""
    text = re.sub(r"\s+", " ", text.lower().replace("-", " "))
    kept = [NEGATION.split(clause, maxsplit=1)[0] for clause in CLAUSE_END.split(text)]
    return " | ".join(kept)


def _mentions(text: str, matcher: tuple[re.Pattern[str], dict[str, str]]) -> set[str]:
    pattern, owner = matcher
    return {owner[m.group(0)] for m in pattern.finditer(_affirmed(text))}


def test_same_seed_and_index_give_the_same_report_in_any_order() -> None:
    a, b = FundusSynth(seed=9, size=32), FundusSynth(seed=9, size=32)
    forward = [synthetic_report(a, i) for i in range(20)]
    backward = [synthetic_report(b, i) for i in reversed(range(20))][::-1]
    assert forward == backward
    assert synthetic_report(a, 3) == forward[3]
    other = FundusSynth(seed=10, size=32)
    assert sum(synthetic_report(other, i) != t for i, t in enumerate(forward)) >= 18


def test_reports_leave_images_and_labels_unchanged() -> None:
    fresh, used = FundusSynth(seed=2, size=32), FundusSynth(seed=2, size=32)
    for i in range(6):
        before = used.sample(i).image.tobytes()
        report_details(used, i)
        assert used.sample(i).image.tobytes() == before == fresh.sample(i).image.tobytes()
        assert used.labels_of(i) == fresh.labels_of(i)


def test_impression_names_are_dictionary_names_or_aliases(matcher) -> None:
    assert set(IMPRESSION_NAMES) == set(CATEGORIES)
    for cat, names in IMPRESSION_NAMES.items():
        for name in names:  # "fundus within normal limits" holds the alias "within normal limits"
            assert _mentions(name, matcher) == {cat}, (cat, name)


def test_every_true_category_is_recoverable(reports: list[SynthReport], matcher) -> None:
    from_findings_only = 0
    for r in reports:
        named = _mentions(r.text, matcher)
        affirmed = _affirmed(r.text)
        for cat in r.categories:
            cue = CUES.get(cat)
            by_cue = cue is not None and re.search(cue, affirmed) is not None
            assert cat in named or by_cue, (cat, r.text)
            from_findings_only += cat not in named
        assert set(r.omitted) <= set(r.categories) & set(IMPLIED_BY)
    assert from_findings_only >= 10  # the impression is sometimes left out


def test_absent_categories_are_never_affirmed(reports: list[SynthReport], matcher) -> None:
    for r in reports:
        wrong = (_mentions(r.text, matcher) & set(CATEGORIES)) - set(r.categories)
        assert not wrong, (wrong, r.text)


def test_hedges_only_concern_true_backed_categories(reports: list[SynthReport]) -> None:
    hedged = [r for r in reports if r.hedged]
    assert len(hedged) >= 10
    for r in reports:
        assert set(r.hedged) <= set(r.categories)
        has_hedge_words = re.search(HEDGE_WORDS, r.text.lower()) is not None
        assert has_hedge_words == bool(r.hedged), r.text
        for cat in r.hedged:  # the implying finding is stated as fact too
            assert re.search(CUES[cat], _affirmed(r.text)), (cat, r.text)


def test_negations_deny_only_absent_things(synth: FundusSynth, reports) -> None:
    negating = 0
    for i, r in enumerate(reports):
        kinds = {f.kind for f in synth._plan(i).findings}
        assert not set(r.negated) & (set(r.categories) | kinds), r
        if r.negated:
            negating += 1
            assert NEGATION.search(r.text.lower()), r.text
    assert negating >= N // 3


def test_reports_vary(synth: FundusSynth, reports: list[SynthReport]) -> None:
    texts = [r.text for r in reports]
    assert len(set(texts)) >= 0.97 * N
    sentences = {re.sub(r"\d+(\.\d+)?", "#", s) for t in texts for s in CLAUSE_END.split(t)}
    assert len(sentences) >= 300
    british = sum("haemorrhage" in t.lower() for t in texts)
    american = sum("hemorrhage" in t.lower() for t in texts)
    assert british >= 20 and american >= 20
    for abbreviation in ("NPDR", "PDR", "AMD", "RVO", "NVD", "CDR"):
        assert any(re.search(rf"\b{abbreviation}\b", t) for t in texts), abbreviation
    assert any(t.startswith("Normal fundus. Disc, macula and vessels within normal") for t in texts)
    prefixed = [i for i, r in enumerate(reports) if r.eye_prefix]
    assert 0.2 * N <= len(prefixed) <= 0.5 * N
    for i in prefixed[:10]:
        assert texts[i].lower().startswith(f"{synth.sample(i).eye} eye")
    unprefixed = [t for r, t in zip(reports, texts) if not r.eye_prefix]
    assert not any(t.lower().startswith(("right eye", "left eye")) for t in unprefixed)


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_write_report_dataset(tmp_path: Path) -> None:
    path = write_report_dataset(tmp_path / "a", n=6, size=32, seed=4, sites=2)
    assert path == tmp_path / "a" / "reports.csv"
    header, *rows = _rows(path)
    assert header == ["image", "report", "labels"] and len(rows) == 6
    synth = FundusSynth(seed=4, size=32, sites=2)
    for i, (image, report, labels) in enumerate(rows):
        assert (tmp_path / "a" / image).is_file()
        assert image == f"{synth.site_of(i)}/images/{i:06d}.png"
        assert report == synthetic_report(synth, i)
        assert ast.literal_eval(labels) == synth.categories_of(i)
    again = write_report_dataset(tmp_path / "b", n=6, size=32, seed=4, sites=2)
    assert again.read_bytes() == path.read_bytes()
    write_flair_dataset(tmp_path / "flair", n=6, size=32, seed=4, sites=2)
    for image, *_ in rows:
        assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()
        assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "flair" / image).read_bytes()
    bare = write_report_dataset(tmp_path / "c", n=2, size=32, with_labels=False)
    header, *rows = _rows(bare)
    assert header == ["image", "report"] and all(len(row) == 2 for row in rows)
    with pytest.raises(ValueError, match="image_format"):
        write_report_dataset(tmp_path / "d", n=1, size=32, image_format="gif")


def test_synthetic_source_without_reports_has_no_text() -> None:
    records = SyntheticSource(n=4, size=32, seed=1).load()
    assert all(r.text is None and r.labels is None for r in records)


def test_synthetic_source_with_reports() -> None:
    labels_module = pytest.importorskip("fundus_lit.data.labels")
    source = SyntheticSource(n=40, size=32, seed=1, offset=5, reports=True)
    records = source.load()
    vocabulary = labels_module.label_vocabulary(None)
    for r in records:
        index = int(r.image.split(":")[1])
        assert r.text == synthetic_report(source.synth, index)
        assert r.labels == labels_module.multi_hot(r.categories, vocabulary)
        assert len(r.labels) == len(vocabulary) and sum(r.labels) == len(r.categories)
    names = list(CATEGORIES)
    narrow = SyntheticSource(n=40, size=32, seed=1, reports=True, label_names=names).load()
    vocabulary = labels_module.label_vocabulary(names)
    assert len(vocabulary) == len(CATEGORIES)
    for r in narrow:
        hot = {vocabulary[k] for k, v in enumerate(r.labels) if v}
        assert {category_key(c) for c in hot} == {category_key(c) for c in r.categories}

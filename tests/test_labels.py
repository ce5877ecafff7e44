"""Report labels: vocabulary, the rule-based extractor on hand-written reports, the report CSV
reader and the ``fundus-lit labels`` verb."""

from __future__ import annotations

import ast
import csv
import logging
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from fundus_lit.commands.labels import run as labels_command
from fundus_lit.core.errors import DataError
from fundus_lit.data.labels import Extraction, LabelExtractor, label_vocabulary, multi_hot
from fundus_lit.data.sources import parse_list_cell
from fundus_lit.data.sources.reports import ReportCSVSource
from fundus_lit.synthetic import CATEGORIES, FundusSynth, report_details
from fundus_lit.synthetic.reports import IMPLIED_BY

FIXTURE = Path(__file__).parent / "fixtures" / "reports.csv"
with FIXTURE.open(newline="", encoding="utf-8") as _handle:
    ROWS = [(row["report"], ast.literal_eval(row["expected"])) for row in csv.DictReader(_handle)]


@pytest.fixture(scope="module")
def extractor() -> LabelExtractor:
    return LabelExtractor()


def names_of(ex: LabelExtractor, report: str) -> set[str]:
    return {name for name, v in zip(ex.vocabulary, ex.labels(report)) if v}


def test_fixture_is_big_enough():
    assert len(ROWS) >= 30


@pytest.mark.parametrize(("report", "expected"), ROWS, ids=[f"row{i}" for i in range(len(ROWS))])
def test_fixture_reports(extractor, report, expected):
    assert names_of(extractor, report) == set(expected)


def test_uncertain_negative_leaves_uncertain_findings_out():
    ex = LabelExtractor(uncertain="negative")
    report = "Suspected choroidal neovascularisation with subretinal haemorrhage."
    assert names_of(ex, report) == set()
    assert set(ex.extract(report).uncertain) == {"choroidal neovascularization", "hemorrhages"}
    # the suspicion class is a label of its own; only the underlying finding is uncertain
    assert names_of(ex, "Possible glaucoma.") == {"glaucoma suspect"}
    assert names_of(ex, "Glaucoma suspect, drusen.") == {"glaucoma suspect", "drusen"}
    assert names_of(ex, "Rule out retinal detachment. Drusen.") == {"drusen"}


def test_statuses_and_eyes(extractor):
    found = extractor.extract("No evidence of diabetic retinopathy or diabetic macular oedema.")
    assert found.positive == ("no diabetic retinopathy",)
    assert found.negated == ("diabetic retinopathy", "diabetic macular edema")
    # affirmed in one eye, negated in the other: positive
    found = extractor.extract("Left eye: drusen. Right eye: no drusen.")
    assert found == Extraction(positive=("drusen",))
    # a comma ends a trailing cue's reach, not a leading one's
    found = extractor.extract("No haemorrhages, exudates or drusen; glaucoma not excluded.")
    assert found.negated == ("hemorrhages", "hard exudates", "drusen")
    assert found.uncertain == ("glaucoma",) and found.positive == ("glaucoma suspect",)


def test_empty_report_is_an_empty_extraction(extractor):
    assert extractor.extract("") == Extraction()
    assert extractor.extract("  \n ") == Extraction()
    assert not any(extractor.labels(""))


def test_unmapped_phrases(extractor):
    report = (
        "Arteriovenous nicking, disc margins sharp. No retinal tears. Follow up in 6 months. "
        "Drusen, arteriovenous nicking."
    )
    assert extractor.extract(report).unmapped == ("arteriovenous nicking",)


# The dictionary categories a synthetic finding kind is written as: the extractor labels what a
# report names and infers no diagnosis from a sign, so a category the impression leaves out is
# recovered as the label of the finding that implies it.
FINDING_LABELS = {
    "new_vessels": {
        "neovascularization",
        "neovascularization of the disc",
        "neovascularization elsewhere",
    },
    "enlarged_cup": {"optic disc cupping"},
    "drusen": {"drusen"},
    "flame_haemorrhage": {"flame hemorrhages"},
    "tessellation": {"tessellation"},
}
# ground-truth tags of denied signs -> the category a denial must not affirm
DENIED_SIGNS = {
    "microaneurysm": "microaneurysms",
    "haemorrhage": "hemorrhages",
    "hard_exudate": "hard exudates",
    "cotton_wool_spot": "cotton wool spots",
    "new_vessels": "neovascularization",
    "drusen": "drusen",
}


def _disagreements(found: Extraction, truth) -> list[str]:
    """How one extraction departs from the generator's ground truth (empty: it agrees)."""
    positive, uncertain = set(found.positive), set(found.uncertain)
    out = []
    for cat in truth.categories:
        if cat in truth.omitted:
            if not FINDING_LABELS[IMPLIED_BY[cat]] & positive:
                out.append(f"omitted {cat!r}: its finding is not labelled")
        elif cat in truth.hedged and cat not in uncertain - positive:
            out.append(f"hedged {cat!r} is not uncertain")
        elif cat not in truth.hedged and cat not in positive:
            out.append(f"{cat!r} is not positive")
    wrong = (positive | uncertain) & (set(CATEGORIES) - set(truth.categories))
    wrong |= positive & {DENIED_SIGNS[tag] for tag in truth.negated if tag in DENIED_SIGNS}
    return out + [f"{name!r} is affirmed but absent" for name in sorted(wrong)]


def test_synthetic_reports_map_completely_and_agree_with_their_truth(extractor):
    """Every phrase the project's own report generator writes maps (or is a known normal
    remark), and the labels match the categories each report was written from."""
    unmapped: Counter[str] = Counter()
    wrong: list[tuple[list[str], str]] = []
    reports = 0
    for seed in (0, 1, 2):
        synth = FundusSynth(seed=seed, size=32, sites=2)
        for index in range(1000):
            truth = report_details(synth, index)
            found = extractor.extract(truth.text)
            unmapped.update(found.unmapped)
            errors = _disagreements(found, truth)
            if errors:
                wrong.append((errors, truth.text))
            reports += 1
    assert reports == 3000
    assert not unmapped, unmapped.most_common(10)
    assert not wrong, (len(wrong), wrong[:3])


# (report, positive, negated, uncertain): real-world phrasings of the disc, image-quality and
# red-dot findings the generator writes, with their clinical reading.
CUPPING = ("optic disc cupping",)
SYNONYM_CASES = [
    ("Enlarged optic cup.", CUPPING, (), ()),
    ("Optic cup enlargement.", CUPPING, (), ()),
    ("Cupping of the optic disc.", CUPPING, (), ()),
    ("Optic disc cupping.", CUPPING, (), ()),
    ("Cupped disc.", CUPPING, (), ()),
    ("Optic disc excavation.", CUPPING, (), ()),
    ("Increased cup-to-disc ratio.", CUPPING, (), ()),
    ("Increased cup:disc ratio.", CUPPING, (), ()),
    ("Large C/D ratio.", CUPPING, (), ()),
    ("High CDR.", CUPPING, (), ()),
    ("Thinning of the neuroretinal rim.", CUPPING, (), ()),
    ("Inferior neuroretinal rim thinning.", CUPPING, (), ()),
    ("CDR 0.8.", CUPPING, (), ()),
    ("Vertical CDR = 0.75.", CUPPING, (), ()),
    ("C/D 0.9 in the right eye.", CUPPING, (), ()),
    ("Cup-to-disc ratio of 0.7.", CUPPING, (), ()),
    ("Vertical cup:disc ratio 0.70 with a thin rim.", CUPPING, (), ()),
    ("CDR 1.0, total cupping.", CUPPING, (), ()),
    ("Glaucomatous cupping.", ("glaucoma", *CUPPING), (), ()),
    ("No cupping.", (), CUPPING, ()),
    ("No increased cupping; CDR 0.3.", (), CUPPING, ()),
    ("No enlarged optic cup.", (), CUPPING, ()),
    ("No glaucomatous cupping.", ("no glaucoma",), ("glaucoma", *CUPPING), ()),
    ("Cup to disc ratio not increased.", (), (), ()),
    ("Possible optic cup enlargement.", (), (), CUPPING),
    # the evidence before "suggestive of" stays a fact; the suspicion class is the usual one
    ("CDR 0.8 suggestive of glaucoma.", ("glaucoma suspect", *CUPPING), (), ("glaucoma",)),
    ("Small cup.", (), (), ()),
    ("Optic disc pink with a small cup (CDR 0.3).", (), (), ()),
    ("Physiological cup.", (), (), ()),
    ("Physiologic cupping.", (), (), ()),
    ("Large physiological cup.", (), (), ()),  # a normal variant of a large disc, not cupping
    ("CDR 0.4.", (), (), ()),
    ("Cup:disc ratio 0.35, disc margins sharp.", (), (), ()),
    ("A few tiny red dots at the macula.", ("microaneurysms",), (), ()),
    ("Small red dots around the fovea.", ("microaneurysms",), (), ()),
    ("Hazy view.", ("low image quality",), (), ()),
    ("Image quality reduced.", ("low image quality",), (), ()),
    ("Reduced image quality.", ("low image quality",), (), ()),
    ("Foveal reflex present.", (), (), ()),
    ("Optic disc well perfused.", (), (), ()),
    ("Disc: well-defined margins.", (), (), ()),
    ("Disc, macula and vessels within normal limits.", ("normal",), (), ()),
]


@pytest.mark.parametrize(
    ("report", "positive", "negated", "uncertain"), SYNONYM_CASES, ids=[c[0] for c in SYNONYM_CASES]
)
def test_disc_and_quality_synonyms(extractor, report, positive, negated, uncertain):
    found = extractor.extract(report)
    assert (set(found.positive), set(found.negated)) == (set(positive), set(negated))
    assert set(found.uncertain) == set(uncertain)
    assert found.unmapped == ()


def test_borderline_cup_to_disc_ratio_is_left_to_the_reader(extractor):
    """0.6-0.7 is neither a large nor a normal cup: no label, and the phrase stays visible."""
    found = extractor.extract("Drusen; CDR 0.65.")
    assert found.positive == ("drusen",) and found.unmapped == ("cdr 0.65",)


def test_restricted_vocabulary():
    ex = LabelExtractor(["DR", "glaucoma"])
    assert ex.vocabulary == ["diabetic retinopathy", "glaucoma"]
    assert ex.labels("Proliferative diabetic retinopathy.") == (1.0, 0.0)
    assert ex.extract("No DR.").negated == ("diabetic retinopathy",)
    assert ex.extract("Drusen.").unmapped == ("drusen",)


def test_label_vocabulary():
    names = label_vocabulary()
    assert len(names) == 90 and names[0] == "normal"
    assert label_vocabulary(["AMD", "Glaucoma."]) == [
        "age related macular degeneration",
        "glaucoma",
    ]
    with pytest.raises(ValueError, match="'retinoblastoma'"):
        label_vocabulary(["glaucoma", "retinoblastoma"])
    with pytest.raises(ValueError, match="same category"):
        label_vocabulary(["AMD", "age related macular degeneration"])
    with pytest.raises(ValueError, match="uncertain"):
        LabelExtractor(uncertain="maybe")  # type: ignore[arg-type]


def test_multi_hot():
    vocab = ["glaucoma", "age related macular degeneration", "drusen"]
    assert multi_hot(["drusen", "Age-related macular degeneration."], vocab) == (0.0, 1.0, 1.0)
    assert multi_hot([], vocab) == (0.0, 0.0, 0.0)
    with pytest.raises(KeyError, match="cataract"):
        multi_hot(["cataract"], vocab)


def write_reports(root: Path, rows: list[list[str]], header: str = "image,report") -> Path:
    path = root / "reports.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    for row in rows:
        image = root / row[header.split(",").index("image")]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), (150, 60, 30)).save(image)
    return path


def test_report_source_extracts_labels(tmp_path, caplog):
    rows = [
        ["hosp/a.png", "Left eye: glaucoma.\nRight eye: drusen."],
        ["hosp/b.png", "No abnormality detected."],
        ["hosp/c.png", ""],
        ["other/d.png", "Arteriovenous nicking."],
    ]
    source = ReportCSVSource(str(write_reports(tmp_path, rows)), labels=["drusen", "glaucoma"])
    with caplog.at_level(logging.INFO, logger="fundus_lit.data.sources.reports"):
        records = source.load()
    source.check(records)
    assert [r.dataset for r in records] == ["hosp", "hosp", "hosp", "other"]
    assert records[0].categories == ("drusen", "glaucoma")
    assert records[0].labels == (1.0, 1.0)
    assert records[0].text == "Left eye: glaucoma. Right eye: drusen."
    assert records[0].origin.endswith("reports.csv, line 2")
    # "" (not None): the format carries a report and this one is empty, which is bad input
    assert records[2].labels == (0.0, 0.0) and records[2].text == ""
    assert records[3].origin.endswith("line 6")  # the multi-line report of line 2 spans 3
    empty, silent = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "1 of 4 reports are empty or whitespace only (line 5)" in empty
    assert "2 of 4 reports name no finding" in silent
    assert "'Arteriovenous nicking.' (line 6)" in silent
    assert source.open_image(records[0]).size == (24, 16)


def test_report_source_uses_given_labels(tmp_path, caplog):
    rows = [
        ["s/a.png", "Drusen.", "['AMD', 'drusen']"],
        ["s/b.png", "Drusen.", ""],
        ["s/c.png", "", "[]"],
    ]
    path = write_reports(tmp_path, rows, header="image,report,labels")
    records = ReportCSVSource(str(path)).load()
    assert records[0].categories == ("age related macular degeneration", "drusen")
    assert records[1].categories == ("drusen",)
    assert records[2].categories == () and not any(records[2].labels)
    assert len(records[0].labels) == 90 and sum(records[0].labels) == 2
    with caplog.at_level(logging.WARNING, logger="fundus_lit.data.sources.reports"):
        records = ReportCSVSource(str(path), labels=["drusen"]).load()
    assert [r.labels for r in records] == [(1.0,), (1.0,), (0.0,)]
    assert "age related macular degeneration (1x)" in caplog.text


def test_report_source_errors(tmp_path):
    rows = [["s/a.png", "Drusen.", "['drusen']"], ["s/b.png", "x", "['drusen', 'wobbly eye']"]]
    path = write_reports(tmp_path, rows, header="image,report,labels")
    with pytest.raises(DataError) as err:
        ReportCSVSource(str(path)).load()
    assert f"{path}, line 3, column 'labels'" in str(err.value)
    assert "'wobbly eye'" in str(err.value)
    with pytest.raises(DataError, match="'retinoblastoma'"):
        ReportCSVSource(str(path), labels=["retinoblastoma"]).load()
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\nx.png,Drusen.\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) \['image', 'report'\]"):
        ReportCSVSource(str(bad)).load()
    with pytest.raises(DataError, match="does not exist"):
        ReportCSVSource(str(tmp_path / "none.csv")).load()
    path = write_reports(tmp_path, rows[:1] + [["s/b.png", "Glaucoma."]], header="image,report")
    (tmp_path / "s" / "b.png").unlink()
    source = ReportCSVSource(str(path), labels=["drusen"])
    with pytest.raises(DataError, match="1 of 2 images"):
        source.check(source.load())


def test_labels_command(tmp_path, capsys):
    path = tmp_path / "in.csv"
    path.write_text(
        ",image,report,site\n"
        "0,h/a.png,Moderate NPDR. Arteriovenous nicking.,x\n"
        "1,h/b.png,No diabetic retinopathy; possible glaucoma.,y\n"
        "2,h/c.png,Arteriovenous nicking.,z\n"
        "3,h/d.png,,w\n"
    )
    out = tmp_path / "out" / "labelled.csv"
    labels_command(["--reports", str(path), "--out", str(out), "--top", "5"])
    text = capsys.readouterr().out
    assert "reports: 4 (1 empty)" in text
    assert "coverage: 50.0% (2 of 4 reports with >= 1 label); 2 with no label" in text
    row = next(line for line in text.splitlines() if line.startswith("diabetic retinopathy "))
    assert row.split()[-3:] == ["0", "1", "0"]
    assert "     2  arteriovenous nicking" in text
    with out.open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [w["site"] for w in written] == ["x", "y", "z", "w"]
    assert parse_list_cell(written[1]["labels"], "test") == (
        "no diabetic retinopathy",
        "glaucoma",
        "glaucoma suspect",
    )
    assert parse_list_cell(written[3]["labels"], "test") == ()
    # the labelled file reads back as given labels
    records = ReportCSVSource(str(out), labels=["moderate NPDR", "glaucoma"]).load()
    assert [r.labels for r in records] == [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.0, 0.0)]


def test_labels_command_options_and_errors(tmp_path, capsys):
    path = tmp_path / "in.csv"
    path.write_text("report\nDrusen and glaucoma.\nCataract.\n")
    labels_command(["--reports", str(path), "--labels", "drusen,glaucoma"])
    text = capsys.readouterr().out
    assert "coverage: 50.0%" in text and "cataract" in text  # unmapped under this vocabulary
    with pytest.raises(DataError, match="does not exist"):
        labels_command(["--reports", str(tmp_path / "none.csv")])
    bad = tmp_path / "bad.csv"
    bad.write_text("image,text\na.png,Drusen.\n")
    with pytest.raises(DataError, match=r"missing column 'report'; found \['image', 'text'\]"):
        labels_command(["--reports", str(bad)])
    with pytest.raises(DataError, match="'wobbly'"):
        labels_command(["--reports", str(path), "--labels", "wobbly"])

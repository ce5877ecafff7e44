"""Caption CSVs (MM-Retinal layout) and synthetic atlas captions."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from fundus_lit.core.errors import DataError
from fundus_lit.data.sources.captions import CaptionCSVSource
from fundus_lit.synthetic import FundusSynth
from fundus_lit.synthetic.atlas import atlas_caption
from fundus_lit.synthetic.reports import IMPRESSION_NAMES
from fundus_lit.synthetic.writer import write_atlas_dataset


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_caption_layout_with_extra_and_index_columns(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mm.csv",
        ["", "image", "caption", "source"],
        [["0", "atlas/a.png", "A pink disc.", "book"], ["1", "atlas/b.png", " Drusen. ", "x"]],
    )
    records = CaptionCSVSource(str(path)).load()
    assert [r.text for r in records] == ["A pink disc.", "Drusen."]
    assert [r.dataset for r in records] == ["atlas", "atlas"]
    assert all(r.categories == () and r.labels is None for r in records)
    assert records[1].origin.endswith("line 3")


def test_caption_in_categories_column(tmp_path: Path) -> None:
    rows = [
        ["x/a.png", repr(["a tessellated fundus.", "peripapillary atrophy."])],
        ["x/b.png", "plain"],
    ]
    path = _write(tmp_path / "c.csv", ["image", "categories"], rows)
    for source in (CaptionCSVSource(str(path)), CaptionCSVSource(str(path), None, "categories")):
        texts = [r.text for r in source.load()]
        assert texts == ["a tessellated fundus. peripapillary atrophy.", "plain"]
        assert all(r.categories == () for r in source.load())


def test_empty_captions_are_all_reported(tmp_path: Path) -> None:
    rows = [[f"d/{i}.png", "" if i % 2 else "text"] for i in range(30)]
    rows.append(["d/list.png", "[]"])
    path = _write(tmp_path / "e.csv", ["image", "caption"], rows)
    with pytest.raises(DataError) as err:
        CaptionCSVSource(str(path)).load()
    message = str(err.value)
    assert str(path) in message and "16 row(s)" in message
    assert "line 3" in message and "line 5" in message and "... and 6 more" in message


def test_missing_columns_and_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", ["image", "text"], [["d/a.png", "t"]])
    with pytest.raises(DataError, match=r"missing column\(s\) \['caption'\]"):
        CaptionCSVSource(str(path)).load()
    with pytest.raises(DataError, match=r"\['report'\]"):
        CaptionCSVSource(str(path), caption_column="report").load()
    with pytest.raises(DataError, match="does not exist"):
        CaptionCSVSource(str(tmp_path / "nope.csv")).load()
    good = _write(tmp_path / "g.csv", ["image", "caption"], [["d/a.png", "t"]])
    source = CaptionCSVSource(str(good))
    with pytest.raises(DataError, match="1 of 1 images"):
        source.check(source.load())


@pytest.fixture(scope="module")
def captions() -> list[tuple[list[str], str]]:
    synth = FundusSynth(seed=3, size=64, sites=2)
    return [(synth.categories_of(i), atlas_caption(synth, i)) for i in range(300)]


def test_atlas_captions_are_deterministic_and_leave_images_alone() -> None:
    a, b = FundusSynth(seed=5, size=32), FundusSynth(seed=5, size=32)
    before = a.sample(7).image.copy()
    assert [atlas_caption(a, i) for i in (7, 2, 9)] == [atlas_caption(b, i) for i in (7, 2, 9)]
    assert (a.sample(7).image == before).all()
    assert atlas_caption(a, 7) != atlas_caption(FundusSynth(seed=6, size=32), 7)


def test_atlas_captions_are_long_varied_and_name_the_diagnosis(captions) -> None:
    texts = [text for _, text in captions]
    assert sum(len(t.split()) for t in texts) / len(texts) >= 25
    assert len(set(texts)) >= 0.95 * len(texts)
    assert len({t.split(".")[0] for t in texts}) >= 10  # openings vary too
    for categories, text in captions:
        for cat in categories:
            names = IMPRESSION_NAMES[cat]  # dictionary names/aliases (see the reports tests)
            assert any(n.lower() in text.lower() for n in names), (cat, text)
        if categories != ["normal"]:
            assert not re.search(r"\b(normal|healthy)\b", text, re.I), text


def test_write_atlas_dataset_round_trip(tmp_path: Path) -> None:
    path = write_atlas_dataset(tmp_path / "atlas", n=4, size=48, seed=1, sites=2, offset=10)
    assert path.name == "atlas.csv" and path.read_text().startswith("image,caption\n")
    source = CaptionCSVSource(str(path))
    records = source.load()
    source.check(records)
    synth = FundusSynth(seed=1, size=48, sites=2)
    assert [r.text for r in records] == [atlas_caption(synth, i) for i in range(10, 14)]
    assert [r.image.split("/")[-1] for r in records] == [f"{i:06d}.png" for i in range(10, 14)]
    assert {r.dataset for r in records} <= {"synth_a", "synth_b"}
    assert source.open_image(records[0]).size == (48, 48)

"""The FLAIR CSV reader on good files (quirks included) and on malformed ones."""

import pytest
from PIL import Image

from fundus_lit.data import DataError, FlairCSVSource

GOOD = """,image,atributes,categories
0,13_FIVES/train/Original/100_A.png,[],['age related macular degeneration']
1,08_ODIR/train/2_left.jpg,[],"['laser spot', 'moderate non proliferative retinopathy']"
2,23_HRF/noise/07_h.jpg,['noisy'],[]
3,04_RFMid/Training/12.png,[],"[""coats' disease"", 'no diabetic retinopathy']"
"""


def write_tree(root, csv_text, make_images=True):
    csv = root / "data.csv"
    csv.write_text(csv_text)
    if make_images:
        for line in csv_text.splitlines()[1:]:
            rel = line.split(",")[1]
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (120, 40, 20)).save(root / rel)
    return csv


def test_reads_quirky_rows(tmp_path):
    source = FlairCSVSource(str(write_tree(tmp_path, GOOD)))
    records = source.load()
    source.check(records)
    assert [r.dataset for r in records] == ["13_FIVES", "08_ODIR", "23_HRF", "04_RFMid"]
    assert records[1].categories == ("laser spot", "moderate non proliferative retinopathy")
    assert records[2].attributes == ("noisy",) and records[2].categories == ()
    assert records[3].categories == ("coats' disease", "no diabetic retinopathy")
    assert source.open_image(records[0]).size == (40, 30)


def test_accepts_correct_spelling_and_explicit_root(tmp_path):
    data = tmp_path / "root"
    data.mkdir()
    text = GOOD.replace("atributes", "attributes")
    write_tree(data, text)
    csv = tmp_path / "elsewhere.csv"
    csv.write_text(text)
    assert len(FlairCSVSource(str(csv), root=str(data)).load()) == 4


@pytest.mark.parametrize(
    ("cell", "line", "column"),
    [
        ("\"['glaucoma'\"", 3, "categories"),  # unterminated list
        ("\"__import__('os').system('true')\"", 3, "categories"),  # code is never executed
        ("[1, 2]", 3, "categories"),  # not strings
    ],
)
def test_malformed_cell_names_file_line_and_column(tmp_path, cell, line, column):
    text = GOOD.splitlines()
    text[2] = f"1,08_ODIR/train/2_left.jpg,[],{cell}"
    csv = write_tree(tmp_path, "\n".join(text) + "\n")
    with pytest.raises(DataError) as err:
        FlairCSVSource(str(csv)).load()
    message = str(err.value)
    assert str(csv) in message and f"line {line}" in message and f"'{column}'" in message


def test_missing_column_and_empty_path(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text(",image,categories\n0,x/a.png,[]\n")
    with pytest.raises(DataError, match="missing column.*atributes"):
        FlairCSVSource(str(csv)).load()
    csv.write_text(",image,atributes,categories\n0,,[],[]\n")
    with pytest.raises(DataError, match="line 2, column 'image': empty"):
        FlairCSVSource(str(csv)).load()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="nope.csv does not exist"):
        FlairCSVSource(str(tmp_path / "nope.csv")).load()
    csv = write_tree(tmp_path, GOOD, make_images=False)
    with pytest.raises(DataError, match="data root .*missing_root does not exist"):
        FlairCSVSource(str(csv), root=str(tmp_path / "missing_root")).load()
    source = FlairCSVSource(str(csv))
    with pytest.raises(DataError) as err:
        source.check(source.load())
    assert "4 of 4 images" in str(err.value) and "13_FIVES/train/Original/100_A.png" in str(
        err.value
    )


def test_unreadable_image_is_named(tmp_path):
    csv = write_tree(tmp_path, GOOD)
    (tmp_path / "08_ODIR/train/2_left.jpg").write_text("not an image")
    source = FlairCSVSource(str(csv))
    with pytest.raises(DataError, match="2_left.jpg"):
        source.open_image(source.load()[1])

"""The prepared cache (prepare / PreparedSource / fundus-lit prepare), the HF datasets source and
reduced-scale JPEG decoding: same records and near-identical pipeline pixels as the raw data."""

import io
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fundus_lit.commands.prepare import run as prepare_command
from fundus_lit.data import (
    DataError,
    FlairCSVSource,
    FundusDataModule,
    HFDatasetSource,
    MaskCSVSource,
    PreparedSource,
)
from fundus_lit.data.prepared import prepare
from fundus_lit.data.prepared import writer as prepared_module
from fundus_lit.data.sources import read_rgb
from fundus_lit.data.transforms import ImagePipeline
from fundus_lit.synthetic import FundusSynth, write_flair_dataset
from fundus_lit.synthetic.writer import write_mask_dataset


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """24 synthetic 512-px JPEGs in the FLAIR layout (two sites: two CSV sources)."""
    root = tmp_path_factory.mktemp("raw")
    return [str(p) for p in write_flair_dataset(root, n=24, size=512, image_format="jpg")]


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "p256"
    prepare([FlairCSVSource(c) for c in raw], out, size=256, shard_size=10, progress=False)
    return out


def test_prepared_records_and_images_match_the_raw_source(raw, prepared):
    sources = [FlairCSVSource(c) for c in raw]
    records = [r for s in sources for r in s.load()]
    source = PreparedSource(str(prepared))
    got = source.load()
    source.check(got)
    assert got == records  # origin aside, which now names the shard and row
    assert "shard-00002.arrow, row 3 (prepared from" in got[-1].origin
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["complete"] and manifest["total"] == 24
    assert [s["records"] for s in manifest["shards"]] == [10, 10, 4]
    assert sum(manifest["datasets"].values()) == 24 and manifest["arguments"]["size"] == 256
    assert max(source.open_image(got[0]).size) == 256
    pipeline = ImagePipeline(128)
    diffs = [
        _mad(pipeline(s.open_image(r)), pipeline(source.open_image(p)))
        for (s, r), p in zip([(s, r) for s in sources for r in s.load()], got)
    ]
    assert np.mean(diffs) < 3 and max(diffs) < 6, diffs
    # a record made by the raw source opens too (looked up by value)
    assert source.open_image(records[5]).size == source.open_image(got[5]).size


def test_prepare_resumes_after_an_interruption(raw, tmp_path, monkeypatch):
    sources = [FlairCSVSource(c) for c in raw]
    out = tmp_path / "prep"
    real, calls = prepared_module.write_shard, []

    def dies_after_the_first(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepared_module, "write_shard", dies_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        prepare(sources, out, size=64, shard_size=10, progress=False)
    first = (out / "shard-00000.arrow").stat()
    assert not (out / "shard-00001.arrow").exists()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(DataError, match="unfinished preparation.*re-run"):
        PreparedSource(str(out)).load()

    monkeypatch.setattr(prepared_module, "write_shard", real)
    (out / ".shard-00001.arrow.tmp-999").write_bytes(b"half a shard")  # left by a crash
    prepare(sources, out, size=64, shard_size=10, progress=False)
    again = (out / "shard-00000.arrow").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert not list(out.glob(".shard-*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 3
    assert PreparedSource(str(out)).load() == [r for s in sources for r in s.load()]

    with pytest.raises(DataError, match=r"different arguments: size=64 \(now 96\)"):
        prepare(sources, out, size=96, shard_size=10, progress=False)
    with pytest.raises(DataError, match="source records changed"):
        prepare(sources[:1], out, size=64, shard_size=10, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a prepared folder"):
        prepare(sources, tmp_path / "busy", size=64, progress=False)


def test_damaged_or_missing_shards_are_named(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = copy / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    PreparedSource(str(copy)).check([])  # sizes agree; only the checksum can tell
    with pytest.raises(DataError, match=r"shard-00001\.arrow does not match its sha256"):
        PreparedSource(str(copy), verify=True).check([])
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match=r"shard-00001\.arrow is \d+ bytes"):
        PreparedSource(str(copy)).check([])
    shard.unlink()
    with pytest.raises(DataError, match=r"shard-00001\.arrow is missing"):
        PreparedSource(str(copy)).load()
    with pytest.raises(DataError, match="has no manifest.json"):
        PreparedSource(str(tmp_path)).load()


def test_prepared_source_in_loader_workers(prepared):
    source = PreparedSource(str(prepared))
    source.open_image(source.load()[0])  # maps a shard in this process ...
    clone = pickle.loads(pickle.dumps(source))
    assert clone._tables == {} and source._tables  # ... which is never sent to a worker
    data = FundusDataModule(train=[source], image_size=64, augment=None, val_fraction=0.0)
    data.setup("fit")
    loader = DataLoader(
        data.dataset("train"),
        batch_size=8,
        num_workers=2,
        collate_fn=lambda samples: torch.stack([s.image for s in samples]),
    )
    batches = list(loader)
    assert sum(len(b) for b in batches) == 24 and batches[0].shape[1:] == (3, 64, 64)


def test_prepare_keeps_masks_aligned(tmp_path):
    csv = write_mask_dataset(tmp_path / "raw", n=3, size=128, sites=1)
    raw = MaskCSVSource(str(csv))
    out = prepare([raw], tmp_path / "prep", size=64, progress=False)
    source = PreparedSource(str(out))
    records = source.load()
    assert records == raw.load() and all(r.mask for r in records)
    image, mask = source.open_image(records[0]), source.open_mask(records[0])
    assert image.size == mask.size and max(image.size) == 64
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_prepare_command_end_to_end(raw, tmp_path, capsys):
    config = tmp_path / "data.yaml"
    flair = "class_path: fundus_lit.data.FlairCSVSource"
    config.write_text(
        "data:\n"
        "  class_path: fundus_lit.FundusDataModule\n"
        "  init_args:\n"
        f"    train: [{{{flair}, init_args: {{csv: {raw[0]}}}}}]\n"
        f"    test: [{{{flair}, init_args: {{csv: {raw[1]}}}}}]\n"
        "classes: [normal, glaucoma]\n"  # an evaluation config's other sections are ignored
        "trainer: {max_epochs: 1}\n"
    )
    out = tmp_path / "prepared"
    prepare_command(
        ["--config", str(config), "--out", str(out), "--size", "64", "--shard_size", "4"]
        + ["--split", "all", "--workers", "2", "--progress", "false"]
    )
    printed = capsys.readouterr().out
    assert f"{out / 'train'}" in printed and "class_path: fundus_lit.data.PreparedSource" in printed
    assert f"init_args: {{path: {(out / 'test').resolve()}}}" in printed
    for split, csv in (("train", raw[0]), ("test", raw[1])):
        assert PreparedSource(str(out / split)).load() == FlairCSVSource(csv).load()
    with pytest.raises(DataError, match="lists no val sources.*preparing train covers them"):
        prepare_command(["--config", str(config), "--out", str(tmp_path / "v"), "--split", "val"])


def _hf_images(n: int) -> list[bytes]:
    """JPEG bytes of n flat 30x40 images, grey level 40 * index."""
    blobs = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 30, 3), 40 * i, np.uint8)).save(buffer, format="JPEG")
        blobs.append(buffer.getvalue())
    return blobs


def test_hf_dataset_source_from_save_to_disk_and_parquet(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "caption": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["normal", "glaucoma"]),
            "site": datasets.Value("string"),
        }
    )
    rows = {
        "img": [{"bytes": b, "path": f"eye{i}.jpg"} for i, b in enumerate(_hf_images(3))],
        "caption": ["a normal eye", "", "cupping of the disc"],
        "label": [0, 0, 1],
        "site": ["a", "a", "b"],
    }
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select([2])}).save_to_disk(tmp_path / "dd")
    source = HFDatasetSource(
        str(tmp_path / "dd"), image="img", text="caption", categories="label", dataset="site"
    )
    records = source.load()
    assert [r.image for r in records] == ["eye0.jpg", "eye1.jpg", "eye2.jpg"]
    assert [r.categories for r in records] == [("normal",), ("normal",), ("glaucoma",)]
    assert [r.text for r in records] == ["a normal eye", None, "cupping of the disc"]
    assert [r.dataset for r in records] == ["a", "a", "b"]
    worker = pickle.loads(pickle.dumps(source))  # opens the dataset again, lazily
    assert worker.open_image(records[2]).size == (30, 40)
    assert np.asarray(worker.open_image(records[2])).mean() == pytest.approx(80, abs=3)
    test = HFDatasetSource(str(tmp_path / "dd"), split="test", image="img").load()
    assert len(test) == 1 and test[0].dataset == "dd"
    with pytest.raises(DataError, match=r"no column 'report' \(the 'text' argument\).*'caption'"):
        HFDatasetSource(str(tmp_path / "dd"), image="img", text="report").load()
    with pytest.raises(DataError, match=r"no split 'val'; splits are \['test', 'train'\]"):
        HFDatasetSource(str(tmp_path / "dd"), split="val", image="img").load()

    # parquet: images as path strings (relative to the dataset folder), list categories, labels
    folder = tmp_path / "pq"
    folder.mkdir()
    for i, blob in enumerate(_hf_images(2)):
        (folder / f"{i}.jpg").write_bytes(blob)
    datasets.Dataset.from_dict(
        {
            "file": ["0.jpg", "1.jpg"],
            "findings": [["drusen", "glaucoma"], []],
            "vector": [[1.0, 0.5], [0.0, 0.0]],
        }
    ).to_parquet(folder / "train.parquet")
    source = HFDatasetSource(
        str(folder / "train.parquet"), image="file", categories="findings", labels="vector"
    )
    records = source.load()
    source.check(records)
    assert [r.categories for r in records] == [("drusen", "glaucoma"), ()]
    assert records[0].labels == (1.0, 0.5) and records[0].dataset == "train"
    assert source.open_image(records[1]).size == (30, 40)
    folder_source = HFDatasetSource(str(folder), image="file")  # a folder of parquet files
    assert [r.image for r in folder_source.load()] == ["0.jpg", "1.jpg"]
    (folder / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 2 images .* missing:\n.*1\.jpg"):
        source.check(records)


def test_hf_hub_id_offline_asks_for_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub is offline.*pass a local path instead"):
        HFDatasetSource("someone/fundus-set").load()
    with pytest.raises(DataError, match="does not exist"):
        HFDatasetSource("/no/such/folder").load()


def test_draft_decode_reads_large_jpegs_at_reduced_scale(tmp_path, monkeypatch):
    base = Image.fromarray(FundusSynth(seed=0, size=512).sample(0).image)
    big = base.resize((2048, 2048), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=95)
    big.save(tmp_path / "big.png")
    drafted = read_rgb(tmp_path / "big.jpg", "test", target=128)
    full = read_rgb(tmp_path / "big.jpg", "test")
    assert min(drafted.size) >= 160 and max(drafted.size) <= 512  # 1/8 .. 1/4 scale
    pipeline = ImagePipeline(128)
    assert _mad(pipeline(drafted), pipeline(full)) < 2
    assert read_rgb(tmp_path / "big.png", "test", target=128).size == (2048, 2048)
    assert read_rgb(tmp_path / "big.jpg", "test", mode="L", target=128).size == (2048, 2048)

    # the data module's datasets pass their image size to CSV sources
    (tmp_path / "d.csv").write_text(",image,atributes,categories\n0,big.jpg,[],['normal']\n")
    seen = []
    real = read_rgb

    def spy(path, origin, mode="RGB", target=None):
        seen.append(target)
        return real(path, origin, mode, target)

    monkeypatch.setattr("fundus_lit.data.sources.csv_layouts.read_rgb", spy)
    data = FundusDataModule(test=[FlairCSVSource(str(tmp_path / "d.csv"))], image_size=96)
    data.setup("test")
    assert data.dataset("test")[0].image.shape == (3, 96, 96) and seen == [96]


def test_prepare_rejects_bad_arguments(raw, tmp_path):
    sources = [FlairCSVSource(raw[0])]
    for kwargs, message in (
        ({"size": 4}, "size must be"),
        ({"quality": 0}, "quality must be"),
        ({"shard_size": 0}, "shard_size must be"),
    ):
        with pytest.raises(DataError, match=message):
            prepare(sources, tmp_path / "x", progress=False, **kwargs)
    with pytest.raises(DataError, match="no sources"):
        prepare([], tmp_path / "x", progress=False)
    assert not os.path.exists(tmp_path / "x")

"""The bad-input policy under fault injection on small synthetic CSV datasets: missing files
before training (listed all at once; ``missing=drop``), and at run time a truncated JPEG, a
zero-byte file, a text file named ``.png`` and an empty report (``bad_input=error`` names the
file, ``skip`` leaves the samples out, counts and lists them), through the CLI as well."""

import csv
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from fundus_lit.cli import main
from fundus_lit.data import DataError, FlairCSVSource, FundusDataModule
from fundus_lit.data.bad_input import BadInputError, BadSample, SkipLog
from fundus_lit.data.dataset import Collator, PairedCollator, Sample
from fundus_lit.data.sources import read_rgb
from fundus_lit.data.sources.reports import ReportCSVSource
from fundus_lit.data.text import ReportTextBuilder, TemplateTextBuilder
from fundus_lit.synthetic import write_flair_dataset, write_report_dataset
from tests.conftest import MINILM

ROOT = Path(__file__).resolve().parents[1]
N = 24


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pristine")
    write_flair_dataset(out, n=N, size=64, sites=1, image_format="jpg")
    return out


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    """A private copy to break: the data root, holding one FLAIR CSV."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def the_csv(root: Path) -> Path:
    (path,) = root.glob("*.csv")
    return path


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def write_rows(path: Path, table: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(table)
    return path


def image_of(root: Path, row: int) -> Path:
    """The image file of data row ``row`` (CSV line ``row + 2``)."""
    return root / rows(the_csv(root))[row + 1][1]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def text_as_png(root: Path, row: int) -> Path:
    """Point data row ``row`` at a text file named ``.png``."""
    fake = image_of(root, row).with_name("notes.png")
    fake.write_text("exported by a spreadsheet, not an image\n")
    table = rows(the_csv(root))
    table[row + 1][1] = str(fake.relative_to(root))
    write_rows(the_csv(root), table)
    return fake


def line(root: Path, row: int) -> str:
    return f"{the_csv(root)}, line {row + 2}"


def datamodule(**kwargs) -> FundusDataModule:
    defaults = dict(
        image_size=32,
        batch_size=8,
        num_workers=0,
        pin_memory=False,
        tokenizer=MINILM,
        max_length=16,
    )
    return FundusDataModule(**(defaults | kwargs))


def flair(root: Path, path: Path | None = None) -> FlairCSVSource:
    return FlairCSVSource(str(path or the_csv(root)), root=str(root))


def test_truncated_jpeg_opens_lazily_and_fails_on_decode(data):
    import fundus_lit.cli  # noqa: F401  (everything a run imports: nothing may switch the flag)
    import fundus_lit.module  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    path = image_of(data, 3)
    truncate(path)
    with Image.open(path) as img:  # the header is intact: opening succeeds
        assert img.size == (64, 64)
    with pytest.raises(DataError, match=r"truncated") as err:
        read_rgb(path, "here.csv, line 5", target=32)
    assert str(path) in str(err.value) and "here.csv, line 5" in str(err.value)


def test_missing_files_of_every_split_are_listed_at_once(data, caplog):
    table = rows(the_csv(data))
    gone = list(range(0, 22, 2))  # 11 training rows
    for row in gone:
        image_of(data, row).unlink()
    kept = [r for i, r in enumerate(table[1:]) if i not in gone]
    gone_val = [[r[0], f"gone/{r[1]}", *r[2:]] for r in kept[:2]]
    write_rows(data.parent / "val.csv", [table[0], *gone_val, *kept])
    gone_expert = [kept[0][0], "elsewhere/x.jpg", *kept[0][2:]]
    write_rows(data.parent / "expert.csv", [table[0], gone_expert, kept[1]])
    sources = dict(
        train=[flair(data)],
        val=[flair(data, data.parent / "val.csv")],
        expert=[flair(data, data.parent / "expert.csv")],
        expert_text=TemplateTextBuilder(),  # FLAIR rows have no caption
    )
    with pytest.raises(DataError) as err:
        datamodule(**sources).setup("fit")
    message = str(err.value)
    assert message.startswith("14 listed image file(s) are missing")
    assert "train: 11 of 24 in FlairCSVSource" in message
    assert "val: 2 of 15" in message and "expert: 1 of 2" in message
    for row in gone[:10]:  # the first ten by file and line, the rest counted
        assert f"{image_of(data, row)} ({line(data, row)})" in message
    assert f"({line(data, gone[10])})" not in message and "... and 4 more" in message
    assert "missing=drop" in message

    caplog.set_level(logging.WARNING)
    dm = datamodule(**sources, missing="drop", val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 13 and len(dm.splits["val"]) == 13
    assert len(dm.splits["expert"]) == 1
    assert "dropped the records of missing files; 14 listed" in caplog.text
    assert "train: 11 of 24" in caplog.text
    batch = next(iter(dm.train_dataloader()))  # training goes on with what is there
    assert len(batch) == 8 and len(batch.extra["expert"]) == 8
    with pytest.raises(DataError, match="must be 'error' or 'drop'"):
        datamodule(**sources, missing="ignore")


FAULTS = {
    "truncated jpeg": (lambda root: truncate(image_of(root, 5)), "truncated"),
    "zero-byte file": (lambda root: image_of(root, 5).write_bytes(b""), "cannot identify"),
    "text named .png": (lambda root: text_as_png(root, 5), "cannot identify"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_error_policy_names_file_origin_and_reason(data, fault):
    breaks, reason = FAULTS[fault]
    breaks(data)
    dm = datamodule(test=[flair(data)])
    dm.setup("test")
    with pytest.raises(BadInputError) as err:
        list(dm.test_dataloader())
    message = str(err.value)
    assert str(image_of(data, 5)) in message and f"({line(data, 5)})" in message
    assert reason in message and "unreadable image" in message and "bad_input=skip" in message


def test_skip_policy_leaves_bad_samples_out_counts_and_lists_them(data, caplog):
    truncate(image_of(data, 1))
    image_of(data, 10).write_bytes(b"")
    text_as_png(data, 17)
    bad = {1: "truncated", 10: "cannot identify", 17: "cannot identify"}
    dm = datamodule(test=[flair(data)], bad_input="skip")
    dm.setup("test")
    caplog.set_level(logging.WARNING)
    batches = [dm.on_before_batch_transfer(b, 0) for b in dm.test_dataloader()]
    assert [len(b) for b in batches] == [7, 7, 7]  # one bad sample in each batch of 8
    seen = torch.cat([b.indices for b in batches]).tolist()
    assert seen == [i for i in range(N) if i not in bad]
    assert all(b.images.shape[0] == b.input_ids.shape[0] == len(b.texts) for b in batches)
    skipped = [entry for b in batches for entry in b.extra["skipped"]]
    assert [(path, origin) for path, origin, _ in skipped] == [
        (str(image_of(data, row)), line(data, row)) for row in bad
    ]
    assert all(why in reason for (*_, reason), why in zip(skipped, bad.values()))
    assert dm.skip_log.total == 3 and dm.skip_log.counts == {"load": 3}
    assert caplog.text.count("skipped ") == 3  # each logged where it was skipped (a worker)

    caplog.clear()
    dm.teardown("test")
    summary = caplog.text
    assert "skipped 3 sample(s) with an unreadable image or no usable text" in summary
    for row, why in bad.items():
        assert f"{image_of(data, row)} ({line(data, row)}): unreadable image: " in summary
        assert why in summary
    assert dm.skip_log.total == 0  # the next run reports its own


def test_skips_are_logged_as_a_metric(data):
    truncate(image_of(data, 0))

    class Recorder:
        def __init__(self):
            self.logged = []

        def log_metrics(self, metrics, step):
            self.logged.append((metrics, step))

    class Stage:
        value = "train"

    class Trainer:
        loggers = [Recorder()]
        global_step, global_rank, world_size = 7, 0, 1
        state = type("State", (), {"stage": Stage})()

    dm = datamodule(test=[flair(data)], bad_input="skip")
    dm.setup("test")
    dm.trainer = Trainer()
    for batch in dm.test_dataloader():
        dm.on_before_batch_transfer(batch, 0)
    assert Trainer.loggers[0].logged == [({"data/skipped": 1.0}, 7)]
    assert dm.skip_log.counts == {"train": 1}


@pytest.mark.parametrize("require_text", [False, True])
def test_empty_report_follows_the_policy(tmp_path, require_text):
    path = write_report_dataset(tmp_path, n=8, size=48, sites=1)
    table = rows(path)
    table[3][1] = "   \n  "  # data row 2: whitespace only
    write_rows(path, table)
    source = ReportCSVSource(str(path))
    # an empty report is refused even by a builder that falls back to a template for records
    # of formats without text: a template in its place trains on words nobody wrote for it
    text = ReportTextBuilder(require_text=require_text)
    where = f"{path}, line 4"

    dm = datamodule(test=[source], text=text, batch_size=4)
    with pytest.raises(DataError, match=r"1 record\(s\) have an empty") as err:
        dm.setup("test")  # before any batch is drawn
    assert f"test: {table[3][0]} ({where})" in str(err.value)
    assert "bad_input=skip" in str(err.value)

    dm = datamodule(test=[source], text=text, batch_size=4, bad_input="skip")
    dm.setup("test")
    batches = [dm.on_before_batch_transfer(b, 0) for b in dm.test_dataloader()]
    assert [len(b) for b in batches] == [3, 4] and all(t.strip() for b in batches for t in b.texts)
    ((_, origin, reason),) = batches[0].extra["skipped"]
    assert origin == where and "empty or whitespace only" in reason
    assert dm.skip_log.total == 1


def test_empty_reports_in_a_cli_fit_stop_it_or_are_skipped_and_counted(tmp_path, capsys, caplog):
    """Issue 16.3: 12 of 40 reports blanked; ViLReF on the tiny overlay trained on them."""
    path = write_report_dataset(tmp_path / "data", n=40, size=48, sites=1)
    table = rows(path)
    blank = list(range(1, 41, 3))  # 14 data rows, the last one (40) included
    for row in blank:
        table[row][1] = "" if row % 2 else "  \t "
    write_rows(path, table)
    source = {"class_path": "fundus_lit.data.ReportCSVSource", "init_args": {"csv": str(path)}}
    args = [
        "fit",
        f"--config={ROOT / 'recipes' / 'vilref.yaml'}",
        f"--config={ROOT / 'recipes' / 'overlays' / 'tiny.yaml'}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=2",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        f"--data.init_args.train={json.dumps([source])}",
        "--data.init_args.val=null",
        "--data.init_args.val_fraction=0.25",
        "--data.init_args.batch_size=5",  # 30 train, 10 val records: every one is drawn
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=32",
        "--model.init_args.vision.name=test_resnet",
    ]
    caplog.set_level(logging.WARNING)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"{len(blank)} record(s) have an empty or whitespace-only report" in err
    assert f"{path}, line {blank[0] + 1})" in err and "Traceback" not in err
    # the load-time warning lists the empty reports' lines, never a blank example
    warning = next(r.getMessage() for r in caplog.records if "are empty" in r.getMessage())
    assert f"{len(blank)} of 40 reports are empty" in warning and "line 2, line 5" in warning
    assert "e.g. " not in warning

    caplog.clear()
    main([*args, "--data.init_args.bad_input=skip"])
    summary = next(m for r in caplog.records if (m := r.getMessage()).startswith("fit: skipped"))
    assert "no usable text" in summary
    # every empty report was drawn (train: one epoch, val: both batches of 10 records)
    assert f"({len(blank)} distinct record(s)" in summary


def test_a_batch_with_nothing_good_left_stops_the_run(data):
    for row in range(4):
        image_of(data, row).write_bytes(b"")
    dm = datamodule(test=[flair(data)], bad_input="skip", batch_size=4)
    dm.setup("test")
    with pytest.raises(BadInputError, match=r"every sample of a batch .* \(4\)") as err:
        next(iter(dm.test_dataloader()))
    assert all(f"({line(data, row)})" in str(err.value) for row in range(4))


def test_worker_errors_arrive_as_the_original_message(data):
    truncate(image_of(data, 2))
    dm = datamodule(test=[flair(data)])
    dm.setup("test")
    loader = DataLoader(dm.dataset("test"), batch_size=8, num_workers=1, collate_fn=dm.collate)
    with pytest.raises(BadInputError) as err:
        list(loader)
    message = str(err.value)
    assert message.startswith(f"{image_of(data, 2)} ({line(data, 2)}): unreadable image: ")
    assert message.endswith("(raised in DataLoader worker process 0)")
    assert "Traceback" not in message


def sample(i: int) -> Sample:
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    return Sample(image, f"text {i}", "glaucoma", "site", i, None, ("glaucoma",))


def test_pairs_with_a_bad_side_are_left_out_whole():
    bad = BadSample("atlas/x.jpg", "atlas.csv, line 9", "unreadable image: broken data stream")
    collate = Collator(MINILM, 16, bad_input="skip")
    batch = PairedCollator(collate)(
        [(sample(0), sample(10)), (sample(1), bad), (sample(2), sample(12))]
    )
    assert batch.indices.tolist() == [0, 2] and batch.extra["expert"].indices.tolist() == [10, 12]
    assert batch.extra["skipped"] == [("atlas/x.jpg", "atlas.csv, line 9", bad.reason)]
    with pytest.raises(BadInputError, match=r"atlas/x\.jpg \(atlas\.csv, line 9\)"):
        PairedCollator(Collator(MINILM, 16))([(sample(0), bad)])


def test_a_bad_sample_read_directly_raises_and_still_pickles():
    bad = BadSample("a/b.png", "t.csv, line 3", "unreadable image: cannot identify image file")
    with pytest.raises(BadInputError, match=r"a/b\.png \(t\.csv, line 3\)"):
        bad.image  # noqa: B018
    assert pickle.loads(pickle.dumps(bad)) == bad
    log = SkipLog()
    log.add([bad.skipped(), bad.skipped()], "train")
    assert log.total == 2 and len(log.records) == 1


# -- the CLI end to end ------------------------------------------------------------------------


def fit_args(tmp_path: Path, csv_path: Path, root: Path, workers: int) -> list[str]:
    source = [{"class_path": "fundus_lit.data.FlairCSVSource"}]
    source[0]["init_args"] = {"csv": str(csv_path), "root": str(root)}
    return [
        "fit",
        f"--config={ROOT / 'recipes' / 'clip.yaml'}",
        f"--config={ROOT / 'recipes' / 'overlays' / 'tiny.yaml'}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=1",
        "--trainer.enable_checkpointing=false",
        f"--data.init_args.train={json.dumps(source)}",
        f"--data.init_args.val={json.dumps(source)}",
        "--data.init_args.batch_size=4",
        f"--data.init_args.num_workers={workers}",
        "--data.init_args.image_size=32",
        "--model.init_args.vision.name=test_resnet",
    ]


def test_cli_fit_exits_2_naming_the_file_or_skips_and_summarises(data, tmp_path, capsys, caplog):
    truncate(image_of(data, 0))  # rows 0 and 2: in the first validation batch (unshuffled)
    text_as_png(data, 2)
    csv_path = the_csv(data)
    with pytest.raises(SystemExit) as stop:  # raised in a loader worker, still exit status 2
        main(fit_args(tmp_path / "error", csv_path, data, workers=1))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"{image_of(data, 0)} ({line(data, 0)}): unreadable image: " in err
    assert "truncated" in err and "Traceback" not in err

    caplog.set_level(logging.WARNING)
    main(
        [*fit_args(tmp_path / "skip", csv_path, data, workers=0), "--data.init_args.bad_input=skip"]
    )
    messages = [r.getMessage() for r in caplog.records]
    summary = next(m for m in messages if "with an unreadable image" in m)
    assert summary.startswith("fit: skipped ")
    assert f"{image_of(data, 0)} ({line(data, 0)}): unreadable image: " in summary
    assert f"{image_of(data, 2)} ({line(data, 2)}): unreadable image: " in summary

"""The CLI in-process: synth -> fit on the written CSVs -> validate/predict from the checkpoint,
links between values stated once, and bad input reported before training with exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fundus_lit.cli import cli_main, main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "clip.yaml")
TINY = str(ROOT / "recipes" / "overlays" / "tiny.yaml")


def csv_sources(paths):
    return json.dumps(
        [
            {"class_path": "fundus_lit.data.FlairCSVSource", "init_args": {"csv": str(p)}}
            for p in paths
        ]
    )


def base_args(tmp_path):
    return [
        "--config",
        RECIPE,
        "--config",
        TINY,
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=64",
        "--model.init_args.vision.name=test_resnet",
    ]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    main(["synth", "--out", str(out), "--n", "16", "--size", "72", "--sites", "2", "--seed", "5"])
    return out


def test_synth_then_fit_then_validate_and_predict(synth_root, tmp_path, capsys):
    csvs = sorted(synth_root.glob("*.csv"))
    assert len(csvs) == 2
    args = base_args(tmp_path) + [
        f"--data.init_args.train={csv_sources(csvs)}",
        "--data.init_args.val=null",
        "--data.init_args.val_fraction=0.25",
        "--trainer.max_epochs=1",
    ]
    fit = cli_main(["fit", *args])
    log_dir = Path(fit.trainer.log_dir)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["data"]["init_args"]["train"][0]["init_args"]["csv"] == str(csvs[0])
    assert saved["model"]["init_args"]["vision"]["name"] == "test_resnet"
    logged = fit.trainer.callback_metrics  # the tiny overlay's evaluation callbacks ran
    assert {"val/zeroshot/aca", "val/retrieval/i2t/R@1", "val/retrieval/t2i/mAP@10"} <= set(logged)
    ckpt = Path(fit.trainer.checkpoint_callback.last_model_path)
    assert ckpt.name == "last.ckpt" and ckpt.is_file()
    assert Path(fit.trainer.checkpoint_callback.best_model_path).is_file()
    state = torch.load(ckpt, weights_only=True)  # plain hyper-parameters: safe to load
    assert state["hyper_parameters"]["image_size"] == 64
    assert any(f.name.startswith("events.out.tfevents") for f in log_dir.iterdir())

    val = cli_main(["validate", *args, f"--ckpt_path={ckpt}"])
    assert "val/loss" in val.trainer.callback_metrics
    pred = cli_main(["predict", *args, f"--ckpt_path={ckpt}"])
    rows = pred.trainer.predict_loop.predictions
    assert sum(r["image_emb"].shape[0] for r in rows) == 4  # the held-out quarter of 16

    out = tmp_path / "eval"
    eval_config = str(ROOT / "recipes" / "eval" / "synthetic.yaml")
    test_source = [{"class_path": "fundus_lit.data.SyntheticSource", "init_args": {"n": 12}}]
    main(
        [
            "zeroshot",
            f"--ckpt={ckpt}",
            f"--config={eval_config}",
            f"--data.init_args.test={json.dumps(test_source)}",
            "--data.init_args.num_workers=0",
            f"--out={out}",
            "--classes=[normal, age related macular degeneration]",
        ]
    )
    result = json.loads((out / "eval.json").read_text())["zeroshot"]
    assert result["n"] + result["skipped"] == 12 and {"aca", "kappa", "f1", "auc"} <= set(result)
    assert "| aca |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["zeroshot", f"--ckpt={tmp_path / 'missing.ckpt'}", f"--config={eval_config}"])
    assert stop.value.code == 2 and "missing.ckpt does not exist" in capsys.readouterr().err


def test_values_stated_once_are_linked(tmp_path):
    cli = cli_main(  # run=False: no subcommand
        [
            *base_args(tmp_path),
            "--data.init_args.image_size=96",
            "--model.init_args.text.max_length=20",
        ],
        run=False,
    )
    assert cli.model.hparams.image_size == 96 and cli.model.hparams.batch_size == 4
    assert cli.datamodule.collate.tokenizer_name == cli.model.hparams.text["name"]
    assert cli.datamodule.collate.max_length == 20


def test_missing_data_root_is_reported_before_training(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "train.csv"
    with pytest.raises(SystemExit) as stop:
        main(["fit", *base_args(tmp_path), f"--data.init_args.train={csv_sources([missing])}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_missing_image_is_reported_before_training(synth_root, tmp_path, capsys):
    csv = sorted(synth_root.glob("*.csv"))[0]
    broken = tmp_path / "broken.csv"
    broken.write_text(csv.read_text().replace("/images/", "/gone/", 1))
    source = {"class_path": "fundus_lit.data.FlairCSVSource"}
    source["init_args"] = {"csv": str(broken), "root": str(synth_root)}
    args = [f"--data.init_args.train={json.dumps([source])}"]
    with pytest.raises(SystemExit) as stop:
        main(["fit", *base_args(tmp_path), *args])
    assert stop.value.code == 2
    assert "/gone/" in capsys.readouterr().err


def test_unknown_model_names_exit_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", *base_args(tmp_path), "--model.init_args.vision.name=resnet5000"])
    assert stop.value.code == 2 and "unknown timm model 'resnet5000'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["fit", *base_args(tmp_path), "--model.init_args.text.name=someone/no-such-bert"])
    assert stop.value.code == 2 and "pass a local path" in capsys.readouterr().err


def test_top_level_help_lists_verbs(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "fit" in out and "synth" in out


def test_checkpointing_can_be_switched_off(tmp_path):
    cli = cli_main([*base_args(tmp_path), "--trainer.enable_checkpointing=false"], run=False)
    assert cli.trainer.checkpoint_callback is None


def test_fast_dev_run_writes_no_checkpoint(tmp_path, monkeypatch):
    # Lightning 2.6 writes save_last's checkpoint at train end even under fast_dev_run, into the
    # working directory when no root is given: a smoke run must leave nothing behind.
    monkeypatch.chdir(tmp_path)
    args = [a for a in base_args(tmp_path) if not a.startswith("--trainer.default_root_dir")]
    cli = cli_main(["fit", *args, "--trainer.fast_dev_run=1"])
    assert cli.trainer.state.finished
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.fixture(scope="module")
def predict_run(synth_root, tmp_path_factory):
    """A checkpoint trained 2 steps on one site's CSV, and the arguments that predict the other
    site's images (the test split, in batches of 4)."""
    tmp_path = tmp_path_factory.mktemp("predict")
    csvs = sorted(synth_root.glob("*.csv"))
    args = base_args(tmp_path) + [
        f"--data.init_args.train={csv_sources(csvs[:1])}",
        f"--data.init_args.test={csv_sources(csvs[1:])}",
        "--data.init_args.val=null",
        "--data.init_args.val_fraction=0.25",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
    ]
    fit = cli_main(["fit", *args])
    return args, Path(fit.trainer.checkpoint_callback.last_model_path), csvs[1]


def predicted_rows(path: Path):
    """The predictions file as a researcher loads it (README), with its metadata."""
    import pandas as pd
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(path).metadata[b"fundus_lit"])
    return pd.read_parquet(path), meta


def assert_unit_rows(emb) -> None:
    emb = np.stack(emb)
    assert emb.dtype == np.float32 and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_predict_writes_embeddings_with_their_records(predict_run, tmp_path, capsys):
    """Issue 16, item 7: predict exited 0 and wrote nothing; now the embeddings go to
    predictions.parquet in the checkpoint's run directory, a row per image of the predict
    (test) split in split order, with the record's path and categories."""
    from fundus_lit.data import FlairCSVSource

    args, ckpt, test_csv = predict_run
    capsys.readouterr()
    main(["predict", *args, f"--ckpt_path={ckpt}"])
    path = ckpt.parent.parent / "predictions.parquet"
    records = FlairCSVSource(str(test_csv)).load()
    n = len(records)
    assert n > 4  # more than one batch
    assert f"predict: wrote {n} rows (test split) to {path}" in capsys.readouterr().out
    rows, meta = predicted_rows(path)
    assert len(rows) == n
    assert rows["index"].tolist() == list(range(n))
    assert rows["path"].tolist() == [str((test_csv.parent / r.image).resolve()) for r in records]
    assert [tuple(c) for c in rows["categories"]] == [r.categories for r in records]
    assert rows["dataset"].tolist() == [r.dataset for r in records]
    assert rows["origin"].tolist() == [r.origin for r in records]
    assert all("fundus photograph of" in text for text in rows["text"])  # the embedded prompts
    assert_unit_rows(rows["image_emb"])
    assert_unit_rows(rows["text_emb"])
    assert meta == {"checkpoint": str(ckpt.resolve()), "split": "test", "records": n}

    elsewhere = tmp_path / "elsewhere" / "emb.parquet"
    main(["predict", *args, f"--ckpt_path={ckpt}", f"--predictions.path={elsewhere}"])
    again, _ = predicted_rows(elsewhere)
    np.testing.assert_allclose(np.stack(again["image_emb"]), np.stack(rows["image_emb"]))
    with pytest.raises(SystemExit) as stop:  # a predict option, not a training one
        main(["fit", *args, f"--predictions.path={elsewhere}"])
    assert stop.value.code == 2


def test_predict_on_two_processes_writes_one_file_in_split_order(predict_run, tmp_path):
    """DDP splits the predict set unevenly over the ranks (7 images, 2 processes, batches of 3);
    rank 0 gathers the shares and writes every record once, in split order. Run as a
    subprocess: the DDP launcher re-executes the command per rank."""
    args, ckpt, _ = predict_run
    source = {"class_path": "fundus_lit.data.SyntheticSource", "init_args": {"n": 7, "size": 72}}
    out = tmp_path / "ddp.parquet"
    command = [sys.executable, "-m", "fundus_lit", "predict", *args, f"--ckpt_path={ckpt}"]
    command += [
        f"--data.init_args.test={json.dumps([source])}",
        "--data.init_args.batch_size=3",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.enable_progress_bar=false",
        f"--predictions.path={out}",
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Starting with 2 processes" in run.stderr + run.stdout
    assert run.stdout.count("predict: wrote") == 1 and "wrote 7 rows (test split)" in run.stdout
    rows, _ = predicted_rows(out)
    assert rows["index"].tolist() == list(range(7))
    assert rows["path"].tolist() == [f"synthetic:{i}" for i in range(7)]
    assert_unit_rows(rows["image_emb"])


def test_prediction_rows_follow_record_indices_not_arrival_order():
    """Rows are placed by each sample's record index: ranks deliver interleaved shares, a record
    predicted by two ranks (no distributed sampler) appears once, a rank may have no share, and
    records skipped as unreadable leave no row and shift nothing."""
    from types import SimpleNamespace

    from fundus_lit.data.records import FundusRecord
    from fundus_lit.predict_writer import embedding_table, merge_rows

    def part(indices):
        emb = np.array([[i, 0.0] for i in indices], dtype=np.float32)
        return {"index": np.array(indices), "text": [f"t{i}" for i in indices], "image_emb": emb}

    empty = {"index": np.zeros(0, dtype=np.int64), "text": []}
    rows = merge_rows([part([4, 1]), empty, part([3, 1])])  # record 0 and 2 were skipped
    source = SimpleNamespace(root=None)
    items = [(source, FundusRecord(f"img{i}", "d", (f"c{i}",))) for i in range(5)]
    table = embedding_table(rows, items, {}).to_pydict()
    assert table["index"] == [1, 3, 4] and table["path"] == ["img1", "img3", "img4"]
    assert table["categories"] == [["c1"], ["c3"], ["c4"]] and table["text"] == ["t1", "t3", "t4"]
    assert [emb[0] for emb in table["image_emb"]] == [1, 3, 4]
    assert "text_emb" not in table


def test_predictions_go_to_the_run_directory_or_where_told(tmp_path):
    from types import SimpleNamespace

    from fundus_lit.predict_writer import EmbeddingWriter

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer = SimpleNamespace(ckpt_path=str(ckpt), log_dir=None, default_root_dir=str(tmp_path))
    assert EmbeddingWriter().output_path(trainer) == tmp_path / "run" / "predictions.parquet"
    for given, expected in [
        (f"{tmp_path}/new/", tmp_path / "new" / "predictions.parquet"),  # a folder to be made
        (str(tmp_path), tmp_path / "predictions.parquet"),  # an existing folder
        (str(tmp_path / "emb.parquet"), tmp_path / "emb.parquet"),
    ]:
        assert EmbeddingWriter(given).output_path(trainer) == expected
    trainer = SimpleNamespace(ckpt_path=None, log_dir=str(tmp_path / "logs"))
    assert EmbeddingWriter().output_path(trainer) == tmp_path / "logs" / "predictions.parquet"


def test_an_unknown_verb_names_the_nearest_and_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluat", "--ckpt", "x.ckpt"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "unknown verb 'evaluat'; did you mean evaluate?" in err
    assert "recipes" in err and "fit" in err and "Traceback" not in err


@pytest.mark.parametrize("verb", ["evaluate", "zeroshot", "index"])
def test_an_evaluation_without_data_says_where_the_evaluation_configs_are(verb, capsys):
    with pytest.raises(SystemExit) as stop:
        main([verb, "--ckpt", "x.ckpt", "--out", "ignored"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"{verb}: no test data" in err and "--config recipes/eval/synthetic.yaml" in err
    assert "synthetic_6class.yaml" in err and "usage" not in err

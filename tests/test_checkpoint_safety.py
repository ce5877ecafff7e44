"""Checkpoints are read weights-only everywhere, and a bad one is named in one line (issue 16.4,
16.5): no traceback, never the advice to load with ``weights_only=False``."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

from fundus_lit import load_pretrained
from fundus_lit.cli import main
from fundus_lit.core.errors import DataError
from tests.test_export import tampered

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
EVAL = RECIPES / "eval" / "synthetic.yaml"


class SigtermAt(L.Callback):
    """Sends this process SIGTERM after ``step`` steps, as a cluster does before preempting."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def args(verb: str, root: Path, *extra: str) -> list[str]:
    return [
        verb,
        *["--config", str(RECIPES / "clip.yaml")],
        *["--config", str(RECIPES / "overlays" / "tiny.yaml")],
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root / 'runs'}",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_predict_batches=1",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.vision.name=test_resnet",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=32",
        *extra,
    ]


def test_fit_preempt_resume_validate_evaluate_load_and_save_safely(tmp_path, monkeypatch, caplog):
    loads: list[object] = []
    real_load = torch.load

    def recording_load(*a, **kw):
        loads.append(kw.get("weights_only"))
        return real_load(*a, **kw)

    dumps: list[object] = []
    real_dump = _CheckpointConnector.dump_checkpoint

    def recording_dump(self, weights_only=None):
        dumps.append(weights_only)
        return real_dump(self, weights_only)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(_CheckpointConnector, "dump_checkpoint", recording_dump)
    caplog.set_level(logging.INFO)
    sigterm = f'[{{"class_path": "{__name__}.SigtermAt", "init_args": {{"step": 2}}}}]'
    with pytest.raises(SystemExit) as stop:  # preempted: exit 128 + SIGTERM
        main(args("fit", tmp_path, "--trainer.max_steps=4", f"--trainer.callbacks={sigterm}"))
    assert stop.value.code == 128 + signal.SIGTERM
    main(args("fit", tmp_path, "--trainer.max_steps=4", "--ckpt_path=last"))
    (last,) = (tmp_path / "runs" / "clip").glob("version_*/checkpoints/last.ckpt")
    assert real_load(last, weights_only=True)["global_step"] == 4
    main(args("validate", tmp_path, f"--ckpt_path={last}"))
    main(["evaluate", f"--ckpt={last}", f"--config={EVAL}", "--tasks=zeroshot"])

    assert len(loads) >= 4 and all(w is True for w in loads), loads
    assert dumps and all(w is not None for w in dumps), dumps
    assert not [r for r in caplog.records if "`weights_only` was not set" in r.getMessage()]


@pytest.mark.parametrize("verb", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("kind", ["exploit", "random_bytes", "absent"])
def test_trainer_verbs_name_a_bad_checkpoint_in_one_line(verb, kind, tmp_path, capsys):
    path = tmp_path / "absent.ckpt" if kind == "absent" else tampered(kind, Path(), tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(args(verb, tmp_path, f"--ckpt_path={path}"))
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert f"fundus-lit: error: checkpoint {path} " in err
    expected = "does not exist" if kind == "absent" else "not a readable weights-only checkpoint"
    assert expected in err
    assert "Traceback" not in err and "weights_only=False" not in err
    assert not (tmp_path / "pwned").exists()  # the exploit's code never ran


def test_load_pretrained_on_a_checkpoint_file_says_how_to_get_a_folder(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"not read")
    with pytest.raises(DataError) as err:
        load_pretrained(ckpt)
    assert f"fundus-lit export --ckpt {ckpt} --out DIR" in str(err.value)

"""``last.ckpt`` holds the final step of every run that ends without a crash (issue 16.2: a run
stopped by ``max_steps`` mid-epoch, after an epoch boundary, kept a checkpoint two steps short)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from fundus_lit.cli import cli_main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BATCHES = 5  # per epoch; step checkpoints every 2 steps: 2, 4, (epoch end 5), 6, 8, ...


class StopAtStep(L.Callback):
    """Stops the run mid-epoch, as ``max_time`` or a user's callback would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit(tmp_path: Path, *extra: str):
    return cli_main(
        [
            "fit",
            *["--config", str(RECIPES / "clip.yaml")],
            *["--config", str(RECIPES / "overlays" / "tiny.yaml")],
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            f"--trainer.limit_train_batches={BATCHES}",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--step_checkpoint.every_n_train_steps=2",
            "--model.init_args.vision.name=test_resnet",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--data.init_args.image_size=32",
            *extra,
        ]
    )


def callbacks(*specs: dict) -> str:
    return "--trainer.callbacks=" + json.dumps(list(specs))


@pytest.mark.parametrize(
    ("extra", "final_step"),
    [
        (["--trainer.max_steps=7", "--trainer.max_epochs=-1", callbacks()], 7),
        (["--trainer.max_epochs=2", callbacks()], 2 * BATCHES),
        (
            [
                "--trainer.max_epochs=9",
                callbacks({"class_path": f"{__name__}.StopAtStep", "init_args": {"step": 7}}),
            ],
            7,
        ),
        (
            [
                "--trainer.max_epochs=9",
                # never improves on the first epoch's loss by 100: stops after the second epoch
                callbacks(
                    {
                        "class_path": "lightning.pytorch.callbacks.EarlyStopping",
                        "init_args": {"monitor": "val/loss", "patience": 0, "min_delta": 100.0},
                    }
                ),
            ],
            2 * BATCHES,
        ),
    ],
    ids=["max_steps-mid-epoch", "max_epochs", "should_stop-mid-epoch", "early-stopping"],
)
def test_last_checkpoint_holds_the_final_step(tmp_path, extra, final_step):
    cli = fit(tmp_path, *extra)
    assert cli.trainer.global_step == final_step
    (last,) = (tmp_path / "runs" / "clip").glob("version_*/checkpoints/last*.ckpt")
    saved = torch.load(last, weights_only=True, map_location="cpu")
    assert saved["global_step"] == final_step
    weights = cli.trainer.lightning_module.state_dict()
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in weights.items())

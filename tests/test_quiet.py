"""Every command prints what the user needs and not the warnings that are expected by design
(issue 16.8); a warning with a real cause still prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from torch import nn

from fundus_lit.core.quiet import unexpected_eval_modules

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
NOISE = (
    "LightningCLI's args parameter",
    "module(s) in eval mode",
    "could not find the monitored key",
    "callbacks used to create the checkpoint",
    "The dirpath has changed",
    "Loading weights",
    "Tip: For seamless cloud logging",
    "LeafSpec",
    "weights_only",
    "Traceback",
)


def fundus_lit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "fundus-lit"), *args]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_fit_validate_and_print_config_print_no_expected_warnings(tmp_path):
    recipe = [
        *["--config", str(RECIPES / "vilref.yaml")],  # a momentum encoder, in eval mode
        *["--config", str(RECIPES / "overlays" / "tiny.yaml")],  # a frozen text tower
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=[]",
        "--model.init_args.vision.name=test_resnet",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=32",
    ]
    printed = fundus_lit(tmp_path, "fit", *recipe, "--print_config")
    # stops mid-epoch before any validation: no val/loss to rank a best checkpoint by
    fit = fundus_lit(tmp_path, "fit", *recipe, "--trainer.max_steps=2")
    assert "`Trainer.fit` stopped: `max_steps=2` reached" in fit.stderr
    (last,) = tmp_path.glob("runs/vilref/version_0/checkpoints/last.ckpt")
    validate = fundus_lit(tmp_path, "validate", *recipe, f"--ckpt_path={last}")
    assert "val/loss" in validate.stdout
    for done in (printed, fit, validate):
        found = [noise for noise in NOISE if noise in done.stderr]
        assert not found, (found, done.stderr[-3000:])


def test_a_trainable_module_left_in_eval_mode_is_still_reported():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Dropout()))
    model[1].requires_grad_(False)
    model[1].eval()  # frozen: eval mode by design
    count, unexpected = unexpected_eval_modules(model)
    assert (count, unexpected) == (3, [])
    model[0].eval()  # trainable, in eval mode: a bug Lightning's warning is for
    assert unexpected_eval_modules(model) == (4, ["0"])

"""The scale overlays run, not only parse: DDP with two CPU processes from the command line (the
launcher re-executes the `fundus-lit` command per rank, so this runs as a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def test_ddp_overlay_trains_on_two_cpu_processes(tmp_path):
    command = [
        str(Path(sys.executable).parent / "fundus-lit"),
        "fit",
        *["--config", str(RECIPES / "flair.yaml")],
        *["--config", str(RECIPES / "overlays" / "tiny.yaml")],
        *["--config", str(RECIPES / "overlays" / "ddp.yaml")],
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=64",
        "--model.init_args.vision.name=test_resnet",
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Starting with 2 processes" in run.stderr + run.stdout
    ckpt = next((tmp_path / "runs" / "flair").glob("version_*/checkpoints/last.ckpt"))
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    # 3 steps per rank, counted once: both ranks stepped together
    assert state["global_step"] == 3

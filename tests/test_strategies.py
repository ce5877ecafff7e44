"""The scale overlays run, not only parse: DDP with two CPU processes from the command line (the
launcher re-executes the `fundus-lit` command per rank, so this runs as a subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def ddp_command(tmp_path: Path, *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "fundus-lit"),
        "fit",
        *["--config", str(RECIPES / "flair.yaml")],
        *["--config", str(RECIPES / "overlays" / "tiny.yaml")],
        *["--config", str(RECIPES / "overlays" / "ddp.yaml")],
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=64",
        "--model.init_args.vision.name=test_resnet",
        *(extra or ["--trainer.limit_train_batches=3"]),
    ]


ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_ddp_overlay_trains_on_two_cpu_processes(tmp_path):
    run = subprocess.run(
        ddp_command(tmp_path), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Starting with 2 processes" in run.stderr + run.stdout
    ckpt = next((tmp_path / "runs" / "flair").glob("version_*/checkpoints/last.ckpt"))
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    # 3 steps per rank, counted once: both ranks stepped together
    assert state["global_step"] == 3


def test_sigterm_preempts_both_ranks_which_save_together_and_resume(tmp_path):
    """The signal reaches rank 0 (as from a scheduler); Lightning forwards it to rank 1, the
    ranks agree at the batch end, save one checkpoint together and exit 143; the resumed run
    finishes the epoch."""
    steps = "--trainer.limit_train_batches=20"
    proc = subprocess.Popen(
        ddp_command(tmp_path, steps, "--step_checkpoint.every_n_train_steps=2"),
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    runs = tmp_path / "runs" / "flair"
    deadline = time.time() + 300
    while not list(runs.glob("version_*/checkpoints/last.ckpt")) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    (ckpt,) = runs.glob("version_*/checkpoints/last.ckpt")
    stopped = torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"]
    assert 0 < stopped < 20, out[-3000:]

    resumed = subprocess.run(
        ddp_command(tmp_path, steps, "--ckpt_path=last"),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["global_step"] == 20, f"stopped at {stopped}"

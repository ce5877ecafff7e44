"""Exact resume under DDP: a 2-process gloo fit of ViLReF (momentum encoders, memory queues,
trainable text tower with dropout), killed with SIGKILL mid-epoch (both processes, as when a
node dies) and resumed from last.ckpt, ends with the weights, queues, EMA weights and optimiser
state of an uninterrupted 2-process run, bit for bit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_resume import (
    ENV,
    EPOCHS,
    RECIPES,
    STEPS_PER_EPOCH,
    assert_same_training_state,
    fit_command,
    last,
)

DDP = [
    *["--config", str(RECIPES / "overlays" / "ddp.yaml")],
    "--trainer.accelerator=cpu",
    "--trainer.devices=2",
    "--data.init_args.num_workers=0",
]


def run(root: Path, *extra: str) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    command = fit_command(root, *DDP, *extra)
    return subprocess.run(command, cwd=root, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp_uninterrupted")
    done = run(root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    return last(root)


def test_ddp_run_killed_mid_epoch_resumes_to_identical_state(tmp_path, uninterrupted):
    # the launcher and the rank it started share a new session: killing the group is a node loss
    proc = subprocess.Popen(
        fit_command(tmp_path, *DDP),
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not list((tmp_path / "runs" / "vilref").glob("version_*/checkpoints/last.ckpt")):
        if proc.poll() is not None or time.time() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the fit ended before its first checkpoint:\n{out[-3000:]}")
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))  # a different moment every run; the step is reported
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    stopped_at = last(tmp_path)["global_step"]
    assert 0 < stopped_at < EPOCHS * STEPS_PER_EPOCH, "the kill came after the run ended"

    resumed = run(tmp_path, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert len(list((tmp_path / "runs" / "vilref").glob("version_*"))) == 1
    state = last(tmp_path)
    compared = list(state["state_dict"])
    # what a DDP resume could lose besides the weights: the queues and the EMA copy
    assert any("queue" in k for k in compared) and any("momentum_encoder." in k for k in compared)
    assert_same_training_state(state, uninterrupted, f"stopped at step {stopped_at}")

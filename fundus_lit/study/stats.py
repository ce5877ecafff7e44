"""Statistics of a study: mean and spread over seeds, and each cell's paired difference to the
baseline with a bootstrap confidence interval.

The difference is paired twice: seed s of a cell against seed s of the baseline (same data
order and initialisation), and, where a metric has per-image outcomes (zero-shot predictions),
the same resampled test images for both. Resampling seeds *and* images makes the interval
cover both sources of noise a reader would otherwise have to guess at: the training run and
the finite test set. Metrics without per-image outcomes resample seeds only (the report says
which).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample standard deviation over seeds (ddof 1); 0 for one seed
    n: int


@dataclass(frozen=True)
class Difference:
    mean: float  # mean over paired seeds of (cell - baseline)
    low: float  # 2.5th percentile of the bootstrap
    high: float  # 97.5th percentile
    seeds: int
    per_image: bool  # images resampled too


def spread(values: list[float] | np.ndarray) -> Spread:
    v = np.asarray(values, dtype=np.float64)
    return Spread(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))


def balanced_accuracy(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Average class accuracy (ACA) of each row of ``predictions`` (..., N) against ``targets``
    (N,): the mean recall over the classes present in ``targets``, as the evaluation reports."""
    classes = np.unique(targets)
    hits = predictions == targets
    recalls = [hits[..., targets == c].mean(axis=-1) for c in classes]
    return np.mean(recalls, axis=0)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(
    cell: list[float],
    baseline: list[float],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Difference:
    """Bootstrap over seeds of the mean paired difference of scalar results (one per seed, same
    seeds in the same order for both)."""
    c, b = np.asarray(cell, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if c.shape != b.shape or c.ndim != 1 or len(c) == 0:
        raise ValueError(f"paired results need the same seeds: {len(c)} vs {len(b)} values")
    diffs = c - b
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diffs), size=(n_boot, len(diffs)))
    low, high = _interval(diffs[picks].mean(axis=1), level)
    return Difference(float(diffs.mean()), low, high, len(diffs), per_image=False)


def paired_difference_per_image(
    targets: np.ndarray,
    cell: np.ndarray,
    baseline: np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Difference:
    """Bootstrap over seeds and test images of the mean paired ACA difference.

    ``cell`` and ``baseline`` are predictions ``(seeds, images)`` on the same test images
    (``targets``, ``(images,)``). Each resample draws seeds and images with replacement and
    scores both arms on the same draw.
    """
    targets = np.asarray(targets)
    cell, baseline = np.asarray(cell), np.asarray(baseline)
    if cell.shape != baseline.shape or cell.shape[-1] != len(targets):
        raise ValueError(
            f"per-image results must cover the same images: {cell.shape}, {baseline.shape}, "
            f"{len(targets)} targets"
        )
    point = balanced_accuracy(targets, cell) - balanced_accuracy(targets, baseline)
    rng = np.random.default_rng(seed)
    n_seeds, n_images = cell.shape
    samples = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.integers(0, n_seeds, size=n_seeds)
        images = rng.integers(0, n_images, size=n_images)
        t = targets[images]
        c = balanced_accuracy(t, cell[seeds][:, images])
        a = balanced_accuracy(t, baseline[seeds][:, images])
        samples[b] = (c - a).mean()
    low, high = _interval(samples, level)
    return Difference(float(point.mean()), low, high, n_seeds, per_image=True)

"""Linear probe on frozen features: K-shot and stratified-fraction supports over several seeds.

The probe only does the math on precomputed features (NumPy arrays or torch tensors); which
features are extracted (pooled backbone features or projected embeddings) is the caller's choice,
recorded in :class:`ProbeConfig` so one configuration block describes the whole evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from fundus_lit.core.progress import progress
from fundus_lit.eval.metrics import classification_metrics

log = logging.getLogger(__name__)

MISSING_CLASS_LOGIT = -1e9
"""Logit of a class the fit never saw: finite (JSON- and mean-safe) yet never the argmax and of
zero probability after a softmax, so the metrics still see ``num_classes`` columns."""

_warned: set[str] = set()


@dataclass
class ProbeConfig:
    """Linear-probe settings (docs/objectives.md §6: C = 0.316, balanced class weights, 1/5/10
    shots, 5 seeds).

    Attributes:
        features: Which features the caller extracts: ``pooled`` backbone features before the
            projection (the default of docs/objectives.md §6) or the projected ``embedding``.
            Unused by the math here.
        shots: Examples per class of the K-shot settings.
        fractions: Stratified fractions of the training split (1.0 = all of it).
        seeds: Support draws per setting (seeds ``0 .. seeds - 1``).
        C: Inverse L2 regularisation strength of the logistic regression.
        max_iter: L-BFGS iterations.
        l2_normalize: L2-normalise features before fitting (off reproduces docs/objectives.md §6).
    """

    features: Literal["pooled", "embedding"] = "pooled"
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    seeds: int = 5
    C: float = 0.316
    max_iter: int = 1000
    l2_normalize: bool = False


@dataclass
class ProbeResult:
    """Probe output.

    Attributes:
        summary: Setting name (``"5-shot"``, ``"10%"``) -> per-metric ``{"mean", "std"}``,
            ``n_train``, ``seeds`` (runs made) and ``runs`` (metrics of each run).
        logits: Setting name -> (N_test, K) test logits of its first seed, for confusion matrices.
    """

    summary: dict[str, dict[str, Any]]
    logits: dict[str, np.ndarray]


def as_numpy(x: Any) -> np.ndarray:
    """Callers hold torch tensors (from feature extraction) or arrays (from disk); both work."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_labels(labels: Any, num_classes: int, name: str) -> np.ndarray:
    """Integer labels in ``0 .. num_classes - 1``; anything else would silently shift classes."""
    y = as_numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(y.shape)}")
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be integer class indices, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise ValueError(f"{name} must be integer class indices, got non-integer values")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in 0..{num_classes - 1}, got values in {y.min()}..{y.max()}"
        )
    return y


def _warn_once(message: str) -> None:
    """Every seed of a setting meets the same short classes; one line says it all."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def sample_support(
    labels: Any,
    num_classes: int,
    *,
    seed: int,
    shots: int | None = None,
    fraction: float | None = None,
) -> np.ndarray:
    """Sorted indices of a support set drawn from a training split.

    ``shots`` draws k examples per class without replacement; a class with fewer keeps all it has
    (a warning says so once per process and situation, not once per seed). ``fraction`` keeps
    ``round(fraction * n_c)`` examples of each present class (Python rounding, at least one) so
    small classes are not dropped from low-data settings. Exactly one of the two is given. The
    draw only depends on ``seed``, so the probe and the adapters see the same supports.
    """
    if (shots is None) == (fraction is None):
        raise ValueError("give exactly one of shots and fraction")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    y = check_labels(labels, num_classes, "labels")
    if shots is not None and (int(shots) != shots or shots < 1):
        raise ValueError(f"shots must be a positive integer, got {shots}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(y), dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    short: list[str] = []
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if shots is not None:
            take = min(int(shots), len(members))
            if take < shots:
                short.append(f"{c}: {len(members)}")
        else:
            take = min(len(members), max(1, round(fraction * len(members)))) if len(members) else 0
        chosen.append(rng.choice(members, size=take, replace=False))
    if short:
        _warn_once(
            f"{shots}-shot support: classes with fewer than {shots} training examples contribute "
            f"all they have (class: count): {', '.join(short)}"
        )
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def summarize_runs(runs: list[dict[str, float]], n_train: int) -> dict[str, Any]:
    """Mean and population std (``ddof=0``: a single run has std 0, not NaN) of each metric."""
    out: dict[str, Any] = {}
    for metric in runs[0]:
        values = np.array([run[metric] for run in runs], dtype=np.float64)
        out[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=0))}
    out["n_train"] = int(n_train)
    out["seeds"] = len(runs)
    out["runs"] = runs
    return out


def setting_name(*, shots: int | None = None, fraction: float | None = None) -> str:
    return f"{shots}-shot" if shots is not None else f"{fraction * 100:g}%"


def _check_features(x: Any, name: str) -> np.ndarray:
    arr = as_numpy(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr.astype(np.float64, copy=False)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_logistic(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    num_classes: int,
    *,
    C: float,
    max_iter: int,
    seed: int,
) -> np.ndarray:
    """(N_test, num_classes) logits of a balanced logistic regression.

    Logits are ``decision_function`` scores: their softmax is exactly the model's probabilities
    but, unlike ``predict_log_proba``, they never underflow to -inf on well-separated data. A
    binary fit's single score d becomes the columns (0, d). Classes absent from the support get
    :data:`MISSING_CLASS_LOGIT`.
    """
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter, random_state=seed)
    clf.fit(train_x, train_y)
    scores = clf.decision_function(test_x)
    if scores.ndim == 1:
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    logits = np.full((len(test_x), num_classes), MISSING_CLASS_LOGIT, dtype=np.float64)
    logits[:, clf.classes_] = scores
    return logits


def _metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return classification_metrics(torch.from_numpy(logits), torch.from_numpy(targets))


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    num_classes: int,
    config: ProbeConfig,
) -> ProbeResult:
    """Fit the probe on each K-shot and fraction support, ``config.seeds`` draws per setting.

    Metrics come from :func:`classification_metrics`; std is the population std (``ddof=0``).
    A setting whose support is the whole training split (fraction 1.0, or shots at least every
    class count) gives the same fit for every seed, so it runs once (``seeds`` 1, std 0).
    scikit-learn's ConvergenceWarning is let through on purpose: it flags a probe that needs
    more ``max_iter`` or normalised features.
    """
    if num_classes < 2:
        raise ValueError(f"a probe needs at least 2 classes, got num_classes={num_classes}")
    if config.seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {config.seeds}")
    xtr, xte = _check_features(train_x, "train_x"), _check_features(test_x, "test_x")
    ytr = check_labels(train_y, num_classes, "train_y")
    yte = check_labels(test_y, num_classes, "test_y")
    if len(xtr) != len(ytr):
        raise ValueError(f"train_x has {len(xtr)} rows but train_y has {len(ytr)} labels")
    if len(xte) != len(yte):
        raise ValueError(f"test_x has {len(xte)} rows but test_y has {len(yte)} labels")
    if len(xte) == 0:
        raise ValueError("the test set is empty")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_x has {xtr.shape[1]} features but test_x has {xte.shape[1]}")
    if len(np.unique(ytr)) < 2:
        raise ValueError("the training split must contain at least 2 classes")
    if config.l2_normalize:
        xtr, xte = _l2_normalize(xtr), _l2_normalize(xte)

    settings: list[dict[str, Any]] = [{"shots": k} for k in config.shots]
    settings += [{"fraction": f} for f in config.fractions]
    summary: dict[str, dict[str, Any]] = {}
    logits_out: dict[str, np.ndarray] = {}
    bar = progress(total=len(settings) * config.seeds, desc="linear probe", unit="fit")
    with bar:
        for setting in settings:
            name = setting_name(**setting)
            runs: list[dict[str, float]] = []
            sizes: list[int] = []
            for seed in range(config.seeds):
                idx = sample_support(ytr, num_classes, seed=seed, **setting)
                logits = fit_logistic(
                    xtr[idx],
                    ytr[idx],
                    xte,
                    num_classes,
                    C=config.C,
                    max_iter=config.max_iter,
                    seed=seed,
                )
                runs.append(_metrics(logits, yte))
                sizes.append(len(idx))
                if seed == 0:
                    logits_out[name] = logits.astype(np.float32)
                if len(idx) == len(ytr):  # the seeds left would refit the same support
                    bar.update(config.seeds - seed)
                    break
                bar.update()
            summary[name] = summarize_runs(runs, round(float(np.mean(sizes))))
    return ProbeResult(summary=summary, logits=logits_out)

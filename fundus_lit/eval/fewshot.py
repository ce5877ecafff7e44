"""Few-shot evaluation: each adapter of :mod:`.adapters` over several support draws per shot
count, next to the zero-shot head it starts from, summarised as the linear probe's runs are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fundus_lit.core.progress import progress
from fundus_lit.eval.adapters import (
    clip_adapter,
    positive_scale,
    prepare,
    tip_adapter,
    tip_adapter_f,
)
from fundus_lit.eval.metrics import classification_metrics
from fundus_lit.eval.probe import check_labels, sample_support, summarize_runs

Method = Literal["clip_adapter", "tip_adapter", "tip_adapter_f"]
METHODS: tuple[str, ...] = ("clip_adapter", "tip_adapter", "tip_adapter_f")


@dataclass
class FewShotConfig:
    """Few-shot adapter settings.

    Attributes:
        shots: Support examples per class (draws shared with the linear probe per seed).
        seeds: Support draws per shot count (seeds ``0 .. seeds - 1``).
        methods: Adapters to evaluate.
        clip_adapter_ratio: Weight of the adapted feature in CLIP-Adapter's residual mix.
        clip_adapter_reduction: Bottleneck reduction (hidden width D // reduction).
        clip_adapter_epochs: Full-batch AdamW steps of CLIP-Adapter.
        clip_adapter_lr: CLIP-Adapter learning rate.
        tip_alpha: Weight of the cache logits of Tip-Adapter(-F).
        tip_beta: Sharpness of the cache affinity of Tip-Adapter(-F).
        tip_f_epochs: Full-batch AdamW steps of Tip-Adapter-F.
        tip_f_lr: Tip-Adapter-F learning rate.
    """

    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    seeds: int = 5
    methods: list[Method] = field(default_factory=lambda: list(METHODS))
    clip_adapter_ratio: float = 0.2
    clip_adapter_reduction: int = 4
    clip_adapter_epochs: int = 200
    clip_adapter_lr: float = 1e-3
    tip_alpha: float = 1.0
    tip_beta: float = 5.5
    tip_f_epochs: int = 50
    tip_f_lr: float = 1e-3


@dataclass
class FewShotResult:
    """Few-shot output.

    Attributes:
        summary: ``"zero_shot"`` -> metrics; each method -> ``"k-shot"`` -> per-metric
            ``{"mean", "std"}``, ``n_train``, ``seeds`` and ``runs`` (as the linear probe's).
        logits: Method -> (N_test, K) test logits of the first seed of the largest shot count,
            for confusion matrices.
    """

    summary: dict[str, Any]
    logits: dict[str, np.ndarray]


def _run_method(
    method: str,
    support: Tensor,
    labels: Tensor,
    test: Tensor,
    protos: Tensor,
    scale: float,
    config: FewShotConfig,
    seed: int,
) -> Tensor:
    if method == "clip_adapter":
        return clip_adapter(
            support,
            labels,
            test,
            protos,
            scale,
            ratio=config.clip_adapter_ratio,
            reduction=config.clip_adapter_reduction,
            epochs=config.clip_adapter_epochs,
            lr=config.clip_adapter_lr,
            seed=seed,
        )
    if method == "tip_adapter":
        return tip_adapter(
            support, labels, test, protos, scale, alpha=config.tip_alpha, beta=config.tip_beta
        )
    return tip_adapter_f(
        support,
        labels,
        test,
        protos,
        scale,
        alpha=config.tip_alpha,
        beta=config.tip_beta,
        epochs=config.tip_f_epochs,
        lr=config.tip_f_lr,
        seed=seed,
    )


def fewshot_eval(
    train_emb: Any,
    train_y: Any,
    test_emb: Any,
    test_y: Any,
    prototypes: Any,
    scale: float | Tensor,
    config: FewShotConfig,
) -> FewShotResult:
    """Zero-shot metrics and each adapter's K-shot metrics over ``config.seeds`` support draws.

    Supports come from :func:`~fundus_lit.eval.probe.sample_support` with the same seeds as the
    linear probe, so probe and adapters are compared on identical draws. Std is the population
    std (``ddof=0``); a shot count that takes the whole training split runs once.
    """
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown few-shot methods {unknown}; choose from {list(METHODS)}")
    if config.seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {config.seeds}")
    train, ytr, test, protos = prepare(train_emb, train_y, test_emb, prototypes, "train")
    num_classes = len(protos)
    yte = torch.from_numpy(check_labels(test_y, num_classes, "test_y"))
    if len(test) != len(yte):
        raise ValueError(f"test_emb has {len(test)} rows but test_y has {len(yte)} labels")
    if len(test) == 0:
        raise ValueError("the test set is empty")
    s = positive_scale(scale)

    zero_shot = s * test @ protos.T
    summary: dict[str, Any] = {"zero_shot": classification_metrics(zero_shot, yte)}
    logits_out: dict[str, np.ndarray] = {}
    supports: dict[tuple[int, int], Tensor] = {}
    largest = max(config.shots, default=0)
    total = len(config.methods) * len(config.shots) * config.seeds
    with progress(total=total, desc="few-shot adapters", unit="fit") as bar:
        for method in config.methods:
            summary[method] = {}
            for k in config.shots:
                runs: list[dict[str, float]] = []
                sizes: list[int] = []
                for seed in range(config.seeds):
                    if (k, seed) not in supports:
                        idx = sample_support(ytr, num_classes, seed=seed, shots=k)
                        supports[k, seed] = torch.from_numpy(idx)
                    idx = supports[k, seed]
                    logits = _run_method(
                        method, train[idx], ytr[idx], test, protos, s, config, seed
                    )
                    runs.append(classification_metrics(logits, yte))
                    sizes.append(len(idx))
                    if seed == 0 and k == largest:
                        logits_out[method] = logits.numpy()
                    if len(idx) == len(ytr):  # the seeds left would draw the same support
                        bar.update(config.seeds - seed)
                        break
                    bar.update()
                summary[method][f"{k}-shot"] = summarize_runs(runs, round(float(np.mean(sizes))))
    return FewShotResult(summary=summary, logits=logits_out)

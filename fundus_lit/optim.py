"""AdamW parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class OptimConfig:
    """Optimiser and schedule.

    Attributes:
        lr: Peak learning rate (after warm-up).
        weight_decay: AdamW decay for weight matrices; norms, biases and the logit scale get none.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup: Linear warm-up length: steps if >= 1, else a fraction of the run's total steps.
        min_lr_ratio: The cosine decays to ``lr * min_lr_ratio`` at the real end of the run.
        lr_multipliers: Parameter-name prefix -> learning-rate multiplier, e.g.
            ``{"encoder.text": 0.1}`` to train a pretrained text tower more gently.
    """

    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: float = 0.05
    min_lr_ratio: float = 0.0
    lr_multipliers: dict[str, float] = field(default_factory=dict)


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases and scalars (the logit scale) are not decayed."""
    return param.ndim < 2 or name.endswith(".bias") or "logit_scale" in name


def param_groups(named: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> list[dict]:
    """Group trainable parameters by (decay, lr multiplier); longest matching prefix wins."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    prefixes = sorted(cfg.lr_multipliers, key=len, reverse=True)
    for name, p in named:
        if not p.requires_grad:
            continue
        mult = next((cfg.lr_multipliers[x] for x in prefixes if name.startswith(x)), 1.0)
        groups.setdefault((no_decay(name, p), mult), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if skip else cfg.weight_decay,
            "lr": cfg.lr * mult,
            "lr_mult": mult,
        }
        for (skip, mult), params in sorted(groups.items())
    ]


def warmup_steps(warmup: float, total: int) -> int:
    return int(warmup) if warmup >= 1 else int(round(warmup * total))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr: linear up over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_with_schedule(
    named: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig, total_steps: int
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: AdamW over :func:`param_groups`, and the warm-up +
    cosine factor stepped per optimiser step (not per epoch: runs are often a few epochs)."""
    optimizer = torch.optim.AdamW(param_groups(named, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    total = max(1, int(total_steps))
    warm = warmup_steps(cfg.warmup, total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warm, total, cfg.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

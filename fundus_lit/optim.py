"""AdamW parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn


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
    groups = param_groups(named, cfg)
    try:  # fused: one kernel per step, and it can drop a step on a device flag (drop_step_if)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)
    except RuntimeError:  # a device without the fused kernel
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    total = max(1, int(total_steps))
    warm = warmup_steps(cfg.warmup, total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warm, total, cfg.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def drop_step_if(optimizer: torch.optim.Optimizer, flag: Tensor) -> None:
    """Make the coming ``optimizer.step()`` change nothing when ``flag`` (0-dim float32) is
    1: no parameter, moment or step-count update, decided on the device.

    A fused optimiser takes the flag as its ``found_inf`` input, the one AMP's gradient scaler
    fills (under fp16 the scaler overwrites it with its own, which a non-finite loss also sets).
    Any other optimiser has no such input: the flag is read on the host and the gradients are
    dropped, which still lets momentum and weight decay act.
    """
    optimizer = getattr(optimizer, "_optimizer", optimizer)  # Lightning's wrapper
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.found_inf = flag  # type: ignore[attr-defined]
    elif bool(flag):
        optimizer.zero_grad(set_to_none=True)


def clip_gradients(
    module: L.LightningModule,
    optimizer: torch.optim.Optimizer,
    value: float | None,
    algorithm: str | None = None,
) -> None:
    """Clip ``module``'s gradients by norm (default) or value, whatever the optimiser.

    Lightning refuses to clip under AMP when the optimiser is fused, because a fused optimiser
    could unscale fp16 gradients itself; here they are unscaled first (fp16 only: bf16 has no
    scaler), and the fused step, told so by the scaler, does not unscale them again. A sharded
    model (FSDP) clips through its own method, which reduces the norm over shards."""
    if not value:
        return
    trainer = module.trainer
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    raw = getattr(optimizer, "_optimizer", optimizer)
    if scaler is not None and getattr(raw, "_step_supports_amp_scaling", False):
        scaler.unscale_(raw)
    wrapped = trainer.strategy.model
    if (algorithm or "norm") == "value":
        torch.nn.utils.clip_grad_value_(module.parameters(), value)
    elif hasattr(wrapped, "clip_grad_norm_"):  # FullyShardedDataParallel
        wrapped.clip_grad_norm_(value)
    else:
        torch.nn.utils.clip_grad_norm_(module.parameters(), value)

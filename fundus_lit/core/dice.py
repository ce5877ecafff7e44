"""The Dice + BCE segmentation loss, shared by G2D's pseudo-segmentation objective and the dense
transfer evaluation (which must not import objectives): one definition of the loss for both."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

DiceInput = Literal["probs", "logits"]


def dice_bce_loss(
    logits: Tensor,
    target: Tensor,
    w_dice: float = 0.5,
    w_bce: float = 0.5,
    *,
    dice_on: DiceInput = "probs",
    eps: float = 1e-6,
    pos_weight: float | None = None,
) -> Tensor:
    """``L_PS = w_dice (1 - Dice(sigmoid(P), M)) + w_bce BCEWithLogits(P, M)`` (G2D, section 4 of
    docs/objectives.md).

    Dice is ``(2 sum PM + eps) / (sum P + sum M + eps)`` per image, averaged over the batch; BCE is
    the mean over all pixels. ``dice_on="logits"`` is the "code" preset's Dice on raw logits, kept
    for reproduction only: its denominator can approach 0 or turn negative. ``pos_weight``
    weighs lesion pixels in the BCE (the dense transfer evaluation's guard against predicting
    nothing when lesions are a small share of the pixels); G2D's objective leaves it unset.
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape"
        )
    if dice_on not in ("probs", "logits"):
        raise ValueError(f"unknown dice_on {dice_on!r}; expected probs or logits")
    target = target.to(logits.dtype)
    pred = torch.sigmoid(logits) if dice_on == "probs" else logits
    inter = (pred * target).flatten(1).sum(dim=1)
    total = pred.flatten(1).sum(dim=1) + target.flatten(1).sum(dim=1)
    dice = (2 * inter + eps) / (total + eps)
    weight = None if pos_weight is None else logits.new_tensor(pos_weight)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    return w_dice * (1 - dice.mean()) + w_bce * bce

"""Classification metrics of docs/objectives.md §6, computed with torchmetrics."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_auroc,
    multiclass_cohen_kappa,
    multiclass_f1_score,
    multiclass_recall,
)


def classification_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """ACA (balanced accuracy = mean per-class recall), quadratic-weighted kappa, macro-F1 and
    one-vs-rest macro AUC of class ``logits`` (N, K) against integer ``targets`` (N,)."""
    k = logits.shape[1]
    logits, targets = logits.float().cpu(), targets.long().cpu()
    preds = logits.argmax(dim=1)
    probs = torch.softmax(logits, dim=1)
    return {
        "aca": float(multiclass_recall(preds, targets, k, average="macro")),
        "kappa": float(multiclass_cohen_kappa(preds, targets, k, weights="quadratic")),
        "f1": float(multiclass_f1_score(preds, targets, k, average="macro")),
        "auc": macro_auc(probs, targets, k),
    }


def macro_auc(probs: Tensor, targets: Tensor, k: int) -> float:
    """One-vs-rest AUC averaged over the classes present in ``targets``: torchmetrics scores an
    absent class 0, which would cap a perfect classifier at (K - missing) / K."""
    present = torch.bincount(targets, minlength=k) > 0
    with warnings.catch_warnings():  # the absent classes' warning: they are left out below
        warnings.filterwarnings("ignore", message="No positive samples in targets")
        per_class = multiclass_auroc(probs, targets, k, average=None)
    return float(per_class[present].mean()) if present.any() else float("nan")

"""Pure loss functions: the public, tested surface of every objective (spec section 7).

No module state and no distributed logic here: objective modules gather across ranks and then call
these, so the math can be checked against the spec's reference numbers in isolation.
Embeddings are expected L2-normalised; ``scale`` is the multiplier s (already exponentiated and
clamped), a float or a 0-d tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``-mean_i sum_j T_ij log softmax(Z_i)_j``: CE against a (row-stochastic) target matrix."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def clip_logits(image_emb: Tensor, text_emb: Tensor, scale: Tensor | float) -> Tensor:
    """``S = s * u v^T`` with rows = images, columns = texts."""
    return scale * image_emb @ text_emb.t()


def clip_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    scale: Tensor | float,
    *,
    row_offset: int = 0,
    text_rows: Tensor | None = None,
    image_cols: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE: ``1/2 [CE(S, I) + CE(S^T, I)]``.

    Called with two (B, D) tensors it is the single-process loss of the spec. The keyword arguments
    serve the distributed form, where a rank holds B local rows and N >= B global columns:
    ``image_emb`` / ``text_rows`` are the local rows (images, texts), ``text_emb`` / ``image_cols``
    the gathered columns, and ``row_offset`` the index of the first local row among the columns.
    The result is then the mean over local rows, so averaging it over ranks gives the global loss.
    """
    if text_rows is None or image_cols is None:
        if image_emb.shape != text_emb.shape:
            raise ValueError(
                f"clip_loss needs paired embeddings of one shape, got {tuple(image_emb.shape)} "
                f"and {tuple(text_emb.shape)}"
            )
        text_rows, image_cols = text_emb, image_emb
    rows = image_emb.shape[0]
    targets = torch.arange(row_offset, row_offset + rows, device=image_emb.device)
    logits_i2t = clip_logits(image_emb, text_emb, scale)
    logits_t2i = clip_logits(text_rows, image_cols, scale)
    return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))

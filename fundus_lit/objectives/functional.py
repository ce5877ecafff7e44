"""Pure loss functions: the public, tested surface of every objective (spec section 7).

No module state and no distributed logic here: objective modules gather across ranks and then call
these, so the math can be checked against the spec's reference numbers in isolation.
Embeddings are expected L2-normalised; ``scale`` is the multiplier s (already exponentiated and
clamped), a float or a 0-d tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fundus_lit.knowledge.keys import category_key


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


def category_ids(categories: Sequence[str], device: torch.device | None = None) -> Tensor:
    """Stable int64 ids of the normalised category keys (equal keys -> equal ids on every rank);
    a process-independent hash, because Python's ``hash`` is salted per process."""
    ids = [
        int.from_bytes(hashlib.blake2b(category_key(c).encode(), digest_size=8).digest(), "big")
        >> 1
        for c in categories
    ]
    return torch.tensor(ids, dtype=torch.long, device=device)


def category_targets(row_ids: Tensor, col_ids: Tensor) -> Tensor:
    """``T_ij = 1[c_i = c_j] / n_i`` for rows against (possibly gathered) columns."""
    same = (row_ids[:, None] == col_ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def soft_clip_loss(
    image_rows: Tensor,
    text_cols: Tensor,
    text_rows: Tensor,
    image_cols: Tensor,
    scale: Tensor | float,
    targets: Tensor,
) -> Tensor:
    """``1/2 [CE_soft(S, T) + CE_soft(S^T, T)]`` with local rows against global columns; ``targets``
    is symmetric in the categories, so one matrix serves both directions."""
    i2t = soft_cross_entropy(clip_logits(image_rows, text_cols, scale), targets)
    t2i = soft_cross_entropy(clip_logits(text_rows, image_cols, scale), targets)
    return 0.5 * (i2t + t2i)


def flair_loss(
    image_emb: Tensor, text_emb: Tensor, scale: Tensor | float, categories: Sequence[str]
) -> Tensor:
    """FLAIR's category-aware CLIP: samples sharing a (normalised) category are positives of each
    other. With all categories distinct it equals :func:`clip_loss`."""
    if len(categories) != image_emb.shape[0]:
        raise ValueError(f"{len(categories)} categories for a batch of {image_emb.shape[0]}")
    ids = category_ids(categories, image_emb.device)
    targets = category_targets(ids, ids).to(image_emb.dtype)
    return soft_clip_loss(image_emb, text_emb, text_emb, image_emb, scale, targets)

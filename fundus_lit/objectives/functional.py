"""Pure loss functions: the public, tested surface of every objective (docs/objectives.md §7).

No module state and no distributed logic here: objective modules gather across ranks and then call
these, so the math can be checked against the reference numbers of docs/objectives.md in isolation.
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

    Called with two (B, D) tensors it is the single-process loss (docs/objectives.md §1). The
    keyword arguments serve the distributed form, where a rank holds B local rows and N >= B global
    columns: ``image_emb`` / ``text_rows`` are the local rows (images, texts), ``text_emb`` /
    ``image_cols`` the gathered columns, and ``row_offset`` the index of the first local row among
    the columns. The result is then the mean over local rows, so averaging it over ranks gives the
    global loss.
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


def label_similarity(rows: Tensor, cols: Tensor) -> Tensor:
    """``A_ij = cos(y_i, y_j)`` of multi-hot label vectors (docs/objectives.md §3).

    Two empty label sets count as identical (1) and an empty set against a non-empty one as
    unrelated (0): reports without findings are alike, and unlike any with findings.
    """
    rows, cols = rows.float(), cols.float()
    rn, cn = rows.pow(2).sum(dim=1), cols.pow(2).sum(dim=1)  # squared norms: label counts
    # sqrt(n_i * n_j), not sqrt(n_i) * sqrt(n_j): for multi-hot rows the product is an exact
    # integer and an identical set of n labels gives sqrt(n^2) = n exactly, so A_ij = 1 and the
    # pair meets delta = 1 (with the two roots, sets of 6, 11, 14, ... labels came out 1 - 1e-7
    # and were neither removed nor counted as false negatives)
    sim = (rows @ cols.t()) / (rn[:, None] * cn[None, :]).sqrt().clamp_min(1e-12)
    both_empty = (rn[:, None] == 0) & (cn[None, :] == 0)
    return torch.where(both_empty, torch.ones_like(sim), sim)


def wsc_weights(
    similarity: Tensor,
    positives: Tensor,
    gamma: float = 1.0,
    fn_threshold: float = 1.0,
    fn_removal: bool = True,
) -> Tensor:
    """Negative weights ``w_ij``: ``(1 - A_ij) ** gamma`` (close pairs pushed apart slowly), 1 at
    each row's positive column ``positives[i]``. Pairs with ``A_ij >= fn_threshold`` are false
    negatives: weight 0 when ``fn_removal``, else weight 1 like any plain negative. Without that
    switch removal could not be ablated at ``gamma = 1``, where an identical label set already
    weighs ``(1 - 1) ** 1 = 0``."""
    weights = (1.0 - similarity).clamp_min(0.0).pow(gamma)
    weights = weights.masked_fill(similarity >= fn_threshold, 0.0 if fn_removal else 1.0)
    return weights.scatter(1, positives[:, None], 1.0)


def wsc_weight_matrix(
    query_labels: Tensor,
    key_labels: Tensor | Sequence[Tensor],
    positives: Tensor,
    *,
    gamma: float = 1.0,
    fn_threshold: float = 1.0,
    fn_removal: bool = True,
    key_valid: Tensor | None = None,
) -> Tensor:
    """The ``(B, N)`` weights :func:`wsc_weights` of every query against every key.

    Both directions of the loss share them (the queries of both are the batch's samples, the
    keys of both carry the same labels), so they are built once per step. ``key_valid`` ``(N,)``
    marks keys that exist: a queue slot not yet written gets weight 0, which removes it from
    the loss exactly (``log 0 = -inf`` in the log-sum-exp) without a shape that depends on a
    device value. Keys may come in blocks (the batch's, the queue's), read in place instead of
    concatenated: a 65,536-key queue is 0.25 GB to copy every step."""
    blocks = [key_labels] if isinstance(key_labels, Tensor) else key_labels
    similarity = torch.cat([label_similarity(query_labels, block) for block in blocks], dim=1)
    weights = wsc_weights(similarity, positives, gamma, fn_threshold, fn_removal)
    if key_valid is not None:
        weights = weights * key_valid.to(weights.dtype)
    return weights


def wsc_weight_stats(
    weights: Tensor, positives: Tensor, key_valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """For logging, without a host read: the number of negatives removed as false negatives and
    the mean weight of the kept ones."""
    negative = torch.ones_like(weights, dtype=torch.bool).scatter(1, positives[:, None], False)
    if key_valid is not None:
        negative = negative & key_valid.bool()[None, :]
    removed = ((weights == 0) & negative).sum()
    kept = (weights > 0) & negative
    mean_weight = (weights * kept).sum() / kept.sum().clamp_min(1)
    return removed.detach(), mean_weight.detach()


def wsc_direction_loss(
    queries: Tensor,
    keys: Tensor | Sequence[Tensor],
    scale: Tensor | float,
    log_weights: Tensor,
    positives: Tensor,
) -> Tensor:
    """Mean ``L_i`` of one direction given the log weights: the weights enter each GEMM as its
    additive input (one pass over the ``(B, N)`` logits instead of two), block by block when
    the keys come in blocks (see :func:`wsc_weight_matrix`)."""
    scaled, log_weights = queries * scale, log_weights.to(queries.dtype)
    blocks = [keys] if isinstance(keys, Tensor) else keys
    parts, start = [], 0
    for block in blocks:
        end = start + block.shape[0]
        parts.append(torch.addmm(log_weights[:, start:end], scaled, block.t()))
        start = end
    logits = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    positive_logit = logits.gather(1, positives[:, None]).squeeze(1)  # log w_ii = log 1 = 0
    return (torch.logsumexp(logits, dim=1) - positive_logit).mean()


def wsc_direction(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor | float,
    query_labels: Tensor,
    key_labels: Tensor,
    *,
    gamma: float = 1.0,
    fn_threshold: float = 1.0,
    fn_removal: bool = True,
    offset: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of the WSC loss: mean ``L_i`` over the queries, the number of negatives
    removed as false negatives and the mean weight of the kept negatives (for logging).

    Query ``i``'s positive is key ``offset + i`` (its rank's slice of the gathered batch).
    """
    positives = torch.arange(len(queries), device=queries.device) + offset
    opts = {"gamma": gamma, "fn_threshold": fn_threshold, "fn_removal": fn_removal}
    weights = wsc_weight_matrix(query_labels, key_labels, positives, **opts)
    loss = wsc_direction_loss(queries, keys, scale, weights.log(), positives)
    return (loss, *wsc_weight_stats(weights, positives))


def wsc_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    scale: Tensor | float,
    labels: Tensor,
    *,
    image_keys: Tensor | None = None,
    text_keys: Tensor | None = None,
    key_labels: Tensor | None = None,
    gamma: float = 1.0,
    fn_threshold: float = 1.0,
    fn_removal: bool = True,
) -> Tensor:
    """Weighted similarity coupling (docs/objectives.md §3, the formulation this project defines):
    ``L_i = -log(exp(l_ii) / sum_j w_ij exp(l_ij))``, image queries against text keys and text
    queries against image keys, averaged.

    Keys are ``(B + K, D)``: the B positives of the B queries first, then the queue; ``None``
    means the other modality's batch embeddings (no queue). ``key_labels`` ``(B + K, C)``
    default to ``labels``. With ``gamma = 0`` and ``fn_threshold > 1`` (or ``fn_removal=False``)
    every weight is 1 and the loss is CLIP's.
    """
    text_keys = text_emb if text_keys is None else text_keys
    image_keys = image_emb if image_keys is None else image_keys
    key_labels = labels if key_labels is None else key_labels
    positives = torch.arange(len(image_emb), device=image_emb.device)
    opts = {"gamma": gamma, "fn_threshold": fn_threshold, "fn_removal": fn_removal}
    log_weights = wsc_weight_matrix(labels, key_labels, positives, **opts).log()
    i2t = wsc_direction_loss(image_emb, text_keys, scale, log_weights, positives)
    t2i = wsc_direction_loss(text_emb, image_keys, scale, log_weights, positives)
    return (i2t + t2i) / 2


def siglip_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    scale: Tensor | float,
    bias: Tensor | float,
    *,
    text_cols: Tensor | None = None,
    row_offset: int = 0,
) -> Tensor:
    """Pairwise sigmoid loss (SigLIP, docs/objectives.md §9): every image-text pair is its own
    binary problem, ``-log sigmoid(z_ij (s u_i . v_j + b))`` with ``z_ij = +1`` for a matching pair
    and ``-1`` otherwise, summed over the columns and averaged over the rows.

    No softmax couples the pairs, so the batch never needs normalising across ranks: a rank scores
    its B local images against the N gathered texts (``text_cols``; default ``text_emb``, the
    single-process case), its positives at columns ``row_offset + i``; the mean of the ranks'
    losses is the global loss.
    """
    cols = text_emb if text_cols is None else text_cols
    logits = scale * image_emb @ cols.t() + bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(image_emb.shape[0], device=logits.device)
    labels[rows, row_offset + rows] = 1.0
    return -F.logsigmoid(labels * logits).sum(dim=1).mean()


# G2D's pseudo masks and segmentation loss live in their own module (smoothing, presets);
# re-exported here so every objective's functional form is importable from one place.
from fundus_lit.core.dice import dice_bce_loss  # noqa: E402, F401
from fundus_lit.objectives.g2d_functional import pseudo_masks  # noqa: E402, F401

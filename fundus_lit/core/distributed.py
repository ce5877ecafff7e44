"""Gathering across ranks for contrastive objectives.

The rule of docs/objectives.md §8: every rank sees the embeddings of all ranks, and gradients flow
back to the rank that produced each slice, so R ranks with B samples each compute, in value and in
gradient, the loss of one process on the R*B batch. Ranks may hold different batch sizes (a last,
short validation batch); slices are padded for the collective and trimmed again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size), (0, 1) when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sizes(n: int, device: torch.device) -> list[int]:
    _, size = world()
    local = torch.tensor([n], device=device, dtype=torch.long)
    out = [torch.zeros_like(local) for _ in range(size)]
    dist.all_gather(out, local)
    return [int(s.item()) for s in out]


def _all_gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Concatenate ``x`` from all ranks in rank order, differentiable.

    Returns the gathered tensor and the offset of this rank's rows in it (0 when not distributed).
    """
    rank, size = world()
    if size == 1:
        return x, 0
    sizes = _sizes(x.shape[0], x.device)
    return _GatherWithGrad.apply(x, sizes, rank), sum(sizes[:rank])


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (labels, category ids, momentum keys) from all ranks, without gradient."""
    _, size = world()
    if size == 1:
        return x
    with torch.no_grad():
        return _all_gather_padded(x.detach(), _sizes(x.shape[0], x.device))


def rank_offset(n: int, device: torch.device) -> int:
    """This rank's first row in a batch gathered from every rank (``n`` rows here)."""
    rank, size = world()
    if size == 1:
        return 0
    return sum(_sizes(n, device)[:rank])


def first_per_index(indices: Tensor) -> Tensor:
    """Positions of the first row of each distinct sample index, in increasing index order.

    A distributed sampler pads the last share with repeated samples so every rank has as many;
    metrics on the gathered rows would count those twice. Keeping one row per index, ordered by
    index, gives exactly the rows (and the order) of one process reading the split in order.
    """
    order = torch.argsort(indices, stable=True)
    ordered = indices[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return order[first]


def gather_rows(indices: Tensor, *rows: Tensor) -> tuple[Tensor, ...]:
    """``(indices, *rows)`` of every rank, one row per sample index, in increasing index order.

    ``indices`` holds the split index of each local row; ``rows`` are tensors with as many rows
    (embeddings, targets, thumbnails). Every rank must call it (a collective) and every rank gets
    the result; one process gets its own rows, deduplicated and ordered the same way.
    """
    indices, rows = gather_no_grad(indices), tuple(gather_no_grad(r) for r in rows)
    keep = first_per_index(indices)
    return indices[keep], *(r[keep] for r in rows)


def sum_over_ranks(x: Tensor) -> Tensor:
    """``x`` summed over every rank, without gradient (a count that normalises a loss)."""
    _, size = world()
    if size == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return total


def max_over_ranks(x: Tensor) -> Tensor:
    """``x``'s elementwise maximum over every rank, without gradient (a flag any rank may raise);
    a collective, not a host read."""
    _, size = world()
    if size == 1:
        return x
    top = x.detach().clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return top

"""Gradient cache (GradCache, Gao et al. 2021): a contrastive batch larger than activation memory.

A contrastive loss couples every sample of the batch with every other, so it cannot be split into
independent micro-batches the way gradient accumulation splits a classification loss: splitting
would shrink the set of negatives. The loss itself, however, only needs the B x D embeddings,
which are small. One training step is therefore done in three passes:

1. embed the batch chunk by chunk without autograd graphs (:func:`embed_without_graph`);
2. compute the recipe's loss on the full set of embeddings, held as leaf tensors, and backpropagate
   it: this fills ``d loss / d embedding`` (and the gradient of anything the loss uses directly,
   such as the logit scale). The objectives run once, on the whole batch, so whatever else they
   read sees it whole too (WSC's momentum encoder embeds the batch there, without graph, and
   queues its keys after the optimiser step);
3. run each chunk's forward again, this time with a graph, and backpropagate the cached embedding
   gradient through it (:func:`replay_backward`); only one chunk's activations are alive at a time.

Step 3 is exact only if each chunk's replayed forward computes what its first forward computed:

- random operations (dropout, stochastic depth) replay the first pass's draws: the CPU and
  accelerator RNG states are captured before each chunk and restored before its replay, and the
  state after the first pass is reinstated after the replay, so the replay consumes no randomness;
- module buffers that a forward updates in training mode (BatchNorm running statistics and
  ``num_batches_tracked``) are saved before the first pass and restored after it, so each chunk
  updates them once, in its replay, as a forward with a graph would. In training mode BatchNorm
  normalises with the statistics of the chunk it sees, not with the running ones, so restoring the
  buffers does not change the first pass's outputs: both passes see the same chunk statistics.
  That also means a BatchNorm model under the cache normalises each chunk with its own statistics,
  as DDP without SyncBatchNorm normalises each rank's batch; towers without batch statistics
  (LayerNorm: ViTs, BERT) compute exactly the full-batch step.

The helpers are free of Lightning; :class:`fundus_lit.module.PretrainModule` drives them with its
optimiser and strategy (``grad_cache=<chunk size>``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fundus_lit.models.outputs import GLOBAL_OUTPUTS

if TYPE_CHECKING:
    from fundus_lit.objectives.base import Objective

#: One chunk's forward: the rows to embed -> its embeddings (None where an output is absent).
EmbedFn = Callable[[slice], Sequence[Tensor | None]]


def chunk_slices(size: int, chunk: int) -> list[slice]:
    """Consecutive row ranges of at most ``chunk`` rows covering ``size`` rows."""
    if chunk < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk}")
    return [slice(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def check_objectives(objectives: Iterable[Objective]) -> None:
    """Refuse objectives the cache cannot serve: it keeps only each chunk's global embeddings.

    Dense outputs (feature maps, token states, attention) would have to be cached for the whole
    batch, which is the memory the cache exists to save, and the expert stream is a second batch
    that the chunked passes do not embed.
    """
    for obj in objectives:
        what = f"objective {obj.name!r} ({type(obj).__name__})"
        if obj.stream != "public":
            raise ValueError(
                f"{what} uses the {obj.stream!r} stream; the gradient cache embeds only the public "
                "batch: remove grad_cache or this objective"
            )
        dense = sorted(set(obj.requires) - GLOBAL_OUTPUTS)
        if dense:
            raise ValueError(
                f"{what} requires {dense}; the gradient cache keeps only the global embeddings "
                f"({sorted(GLOBAL_OUTPUTS)}) of each chunk, and caching dense outputs for the "
                "whole batch would cost the memory it saves: remove grad_cache or this objective"
            )


# -- random state --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RNGState:
    """The generator states that random ops on ``device`` (and on the CPU) draw from."""

    cpu: Tensor
    device: torch.device
    accelerator: Tensor | None = None


def capture_rng(device: torch.device) -> RNGState:
    """The CPU state, plus the CUDA (or MPS) state of ``device`` when the model runs there."""
    state: Tensor | None = None
    if device.type == "cuda":
        state = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state = torch.mps.get_rng_state()
    return RNGState(torch.get_rng_state(), device, state)


def restore_rng(state: RNGState) -> None:
    torch.set_rng_state(state.cpu)
    if state.accelerator is None:
        return
    if state.device.type == "cuda":
        torch.cuda.set_rng_state(state.accelerator, state.device)
    elif state.device.type == "mps":
        torch.mps.set_rng_state(state.accelerator)


# -- the three passes ----------------------------------------------------------------------------
@contextmanager
def buffers_restored(module: nn.Module) -> Iterator[None]:
    """Put every buffer of ``module`` back as it was on exit (BatchNorm statistics and counters:
    the no-grad first pass must not update them a second time)."""
    saved = [(buf, buf.detach().clone()) for buf in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


@dataclass
class CachedEmbeddings:
    """The first pass: full-batch embeddings as leaves, and what replaying each chunk needs."""

    leaves: list[Tensor | None]
    chunks: list[slice]
    rng: list[RNGState]


def embed_without_graph(
    embed: EmbedFn, size: int, chunk: int, stateful: nn.Module, device: torch.device
) -> CachedEmbeddings:
    """Embed ``size`` rows in chunks, without graphs, into leaves that require grad.

    ``stateful`` is the module whose buffers the forward may update (the encoder).
    """
    chunks = chunk_slices(size, chunk)
    states: list[RNGState] = []
    parts: list[Sequence[Tensor | None]] = []
    with torch.no_grad(), buffers_restored(stateful):
        for rows in chunks:
            states.append(capture_rng(device))
            parts.append(embed(rows))
    leaves: list[Tensor | None] = []
    for outputs in zip(*parts):
        if any(o is None for o in outputs):
            leaves.append(None)
        else:
            leaves.append(torch.cat(outputs).requires_grad_(True))
    return CachedEmbeddings(leaves, chunks, states)


def replay_backward(embed: EmbedFn, cache: CachedEmbeddings, device: torch.device) -> None:
    """Backpropagate the gradients accumulated on ``cache.leaves`` into the model, one chunk's
    graph at a time.

    The cached gradients are passed to ``torch.autograd.backward`` as they are: the replay is the
    second half of the loss's backward, so whatever scaling the loss's backward applied (AMP's loss
    scale) is already in them and must not be applied again.
    """
    after_first_pass = capture_rng(device)
    try:
        for rows, state in zip(cache.chunks, cache.rng):
            restore_rng(state)
            tensors, grads = [], []
            for output, leaf in zip(embed(rows), cache.leaves):
                if output is None or leaf is None or leaf.grad is None:
                    continue  # an output the loss does not use
                if output.requires_grad:  # else: nothing trainable produced it
                    tensors.append(output)
                    grads.append(leaf.grad[rows])
            if tensors:
                torch.autograd.backward(tensors, grads)
    finally:
        restore_rng(after_first_pass)


def grad_cache_backward(
    embed: EmbedFn,
    size: int,
    chunk: int,
    loss_of: Callable[[list[Tensor | None]], Tensor],
    backward: Callable[[Tensor], Any],
    stateful: nn.Module,
    device: torch.device,
) -> Tensor:
    """One step's gradients by the three passes; returns the loss (with its graph freed).

    Args:
        embed: One chunk's forward, returning its embeddings in a fixed order.
        size: Rows in the batch.
        chunk: Rows per chunk.
        loss_of: The loss of the full set of embeddings (leaves, in ``embed``'s order); it may use
            other parameters directly (the logit scale), whose gradients ``backward`` fills.
        backward: Backpropagates the loss (Lightning's ``manual_backward``: precision scaling and
            hooks).
        stateful: The module whose buffers a training-mode forward updates.
        device: Where the model runs (whose RNG random ops draw from).
    """
    cache = embed_without_graph(embed, size, chunk, stateful, device)
    loss = loss_of(cache.leaves)
    backward(loss)
    replay_backward(embed, cache, device)
    return loss.detach()


# -- several processes ---------------------------------------------------------------------------
def average_gradients(
    params: Iterable[Tensor], group: Any = None, bucket_numel: int = 1 << 24
) -> None:
    """Average the gradients of ``params`` over the ranks of ``group``, as DDP's reducer would.

    Used after backward passes run under DDP's ``no_sync``: one all-reduce per bucket of
    gradients instead of one per chunk backward. A parameter without gradient on this rank counts
    as zero; it keeps no gradient only if no rank produced one (DDP's unused-parameter rule).
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    world = dist.get_world_size(group)
    device = params[0].device
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    dist.all_reduce(present, group=group)
    some_rank_has = {id(p): bool(n) for p, n in zip(params, present.tolist())}  # one host read
    by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        by_kind.setdefault((p.device, p.dtype), []).append(p)
    for same in by_kind.values():
        for bucket in _buckets(same, bucket_numel):
            flat = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                    for p in bucket
                ]
            )
            dist.all_reduce(flat, group=group)
            flat.div_(world)
            for p, grad in zip(bucket, flat.split([p.numel() for p in bucket])):
                if not some_rank_has[id(p)]:
                    continue
                if p.grad is None:
                    p.grad = grad.view_as(p).clone()
                else:
                    p.grad.copy_(grad.view_as(p))


def _buckets(params: list[Tensor], numel: int) -> Iterator[list[Tensor]]:
    bucket: list[Tensor] = []
    count = 0
    for p in params:
        if bucket and count + p.numel() > numel:
            yield bucket
            bucket, count = [], 0
        bucket.append(p)
        count += p.numel()
    if bucket:
        yield bucket


def check_trainer(trainer: Any) -> None:
    """Refuse trainer settings the cached step cannot honour (Lightning's own check for manual
    optimisation is bypassed, see :meth:`fundus_lit.module.PretrainModule.setup`)."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

    if trainer.accumulate_grad_batches != 1:
        raise ValueError(
            f"grad_cache does not combine with accumulate_grad_batches="
            f"{trainer.accumulate_grad_batches}: accumulating would split the contrastive batch "
            "again; raise data.batch_size instead (the gradient cache is what makes it fit)"
        )
    strategy = trainer.strategy
    ddp = isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy)
    if not (ddp or isinstance(strategy, SingleDeviceStrategy)):
        raise ValueError(
            f"grad_cache supports single-device and DDP training, not {type(strategy).__name__}: "
            "the cached step averages whole local gradients across ranks itself, and sharded "
            "strategies (FSDP, DeepSpeed) hold neither whole parameters nor whole gradients"
        )
    if ddp and getattr(strategy, "_ddp_kwargs", {}).get("static_graph"):
        raise ValueError(
            "grad_cache does not support DDP static_graph=True: its first-iteration gradient "
            "flush would reduce gradients the cache averages itself"
        )

"""ViLReF-style weighted similarity coupling with momentum encoders and label-carrying queues.

The published ViLReF code does not contain its loss; docs/objectives.md §3 is the formulation this
project defines and implements: label similarity slows the push between close pairs, identical
label sets are removed as false negatives, and momentum keys from a FIFO queue stand in for them.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fundus_lit.core.distributed import gather_no_grad, gather_with_grad, rank_offset
from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.base import Objective, ObjectiveOutput
from fundus_lit.objectives.functional import (
    wsc_direction_loss,
    wsc_weight_matrix,
    wsc_weight_stats,
)

if TYPE_CHECKING:
    from fundus_lit.models.dual_encoder import DualEncoder

_QUEUE_BUFFERS = ("image_queue", "text_queue", "label_queue")


class WSCObjective(Objective):
    """Weighted similarity coupling (docs/objectives.md §3) over the global batch, optionally with
    an EMA copy of both towers and heads and a FIFO queue of its keys with their label vectors.

    Queue contents, pointer, fill and the momentum weights are part of the module's state, so
    checkpoints save and restore them. The label width C is taken from the first batch; a
    checkpoint restores the queue at the width it was saved with.

    Args:
        weight: Multiplier of this objective's loss in the recipe's sum.
        name: Prefix of the logged values.
        gamma: Exponent of the negative weights ``(1 - A_ij) ** gamma``; 0 weighs all equally.
        fn_threshold: ``delta``: negatives with label similarity ``>= delta`` are removed as false
            negatives; any value above 1 keeps them all.
        fn_removal: False keeps the pairs at or above ``delta`` as ordinary negatives (weight 1),
            the ablation of removal alone (at ``gamma = 1`` raising ``delta`` is not enough: an
            identical label set already weighs 0).
        momentum: EMA coefficient ``m`` of the key encoder; null computes keys with the online
            encoder (with gradient) and allows no queue.
        queue_size: ``K`` keys per modality kept from earlier steps (a ring: any size works;
            a multiple of the global batch keeps each step's keys contiguous); 0 disables it.
    """

    default_name = "wsc"

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        gamma: float = 1.0,
        fn_threshold: float = 1.0,
        fn_removal: bool = True,
        momentum: float | None = 0.995,
        queue_size: int = 0,
    ) -> None:
        super().__init__(weight, name)
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1) or null, got {momentum}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        if queue_size and momentum is None:
            raise ValueError("a queue holds momentum keys: set momentum when queue_size > 0")
        self.gamma, self.fn_threshold = float(gamma), float(fn_threshold)
        self.fn_removal = bool(fn_removal)
        self.momentum, self.queue_size = momentum, int(queue_size)
        self.momentum_encoder: nn.Module | None = None
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_fill", torch.zeros((), dtype=torch.long))
        for buffer in _QUEUE_BUFFERS:
            self.register_buffer(buffer, torch.zeros(0, 0))
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []

    # -- state -------------------------------------------------------------------------------
    def attach(self, encoder: DualEncoder, batch_size: int) -> None:
        if self.momentum is None:
            return
        # frozen parameters (a frozen text tower) never move, so the copy shares them instead
        # of holding a second set: deepcopy reuses whatever its memo already maps
        shared = {id(p): p for p in encoder.parameters() if not p.requires_grad}
        self.momentum_encoder = copy.deepcopy(encoder, memo=shared)
        for p in self.momentum_encoder.parameters():
            p.requires_grad_(False)
        self.momentum_encoder.eval()
        if self.queue_size:
            dim = encoder.embed_dim
            self.image_queue = torch.zeros(self.queue_size, dim)
            self.text_queue = torch.zeros(self.queue_size, dim)

    def train(self, mode: bool = True) -> WSCObjective:
        super().train(mode)
        if self.momentum_encoder is not None:  # keys come from a fixed-statistics copy
            self.momentum_encoder.eval()
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # the label width is known only once data arrives: take the saved queue's shape
        for buffer in _QUEUE_BUFFERS:
            saved = state_dict.get(prefix + buffer)
            if saved is not None and saved.shape != getattr(self, buffer).shape:
                setattr(self, buffer, torch.zeros_like(saved, device=getattr(self, buffer).device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    # -- loss --------------------------------------------------------------------------------
    @torch.no_grad()
    def _momentum_keys(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Keys of the momentum encoder, computed under the trainer's precision (the online
        forward's autocast) and kept in fp32 for the loss and the queue."""
        assert self.momentum_encoder is not None
        kind = batch.images.device.type
        dtype = self.autocast_dtype
        with torch.autocast(kind, dtype=dtype, enabled=dtype is not None):
            image = self.momentum_encoder.encode_image(batch.images)["emb"]
            ids, mask, keys = batch.input_ids, batch.attention_mask, batch.text_keys
            text = self.momentum_encoder.encode_text(ids, mask, keys=keys)["emb"]
        return gather_no_grad(image.float()), gather_no_grad(text.float())

    def _queued(self, like: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The whole queue with a mask of its written slots (nothing before the first enqueue).

        Every slot enters the loss, the unwritten ones with weight 0: slicing the filled part
        would need the fill count on the host, a device sync per step."""
        if not self.label_queue.shape[0]:  # no label width yet: no enqueue has happened
            return like[:0], like[:0], labels[:0], None
        slots = torch.arange(self.queue_size, device=self.queue_fill.device)
        return (
            self.image_queue.to(like),
            self.text_queue.to(like),
            self.label_queue.to(labels),
            slots < self.queue_fill,
        )

    def forward(self, outputs: ModelOutputs, batch: Batch) -> ObjectiveOutput:
        assert outputs.text_emb is not None, "WSCObjective needs text embeddings"
        if batch.labels is None:
            raise ValueError(
                "WSCObjective needs per-sample label vectors: use report data (ReportCSVSource, "
                "SyntheticSource with reports: true) so every batch has labels"
            )
        labels = batch.labels.float()
        all_labels = gather_no_grad(labels)
        valid = None
        if self.momentum_encoder is None:
            image_keys, offset = gather_with_grad(outputs.image_emb)
            text_keys, _ = gather_with_grad(outputs.text_emb)
            key_labels = all_labels
        else:
            offset = rank_offset(labels.shape[0], labels.device)
            m_image, m_text = self._momentum_keys(batch)
            q_image, q_text, q_labels, q_valid = self._queued(m_image, all_labels)
            # blocks, not concatenated: the queue is read in place
            image_keys, text_keys = [m_image, q_image], [m_text, q_text]
            key_labels = [all_labels, q_labels]
            if q_valid is not None:
                valid = torch.cat([q_valid.new_ones(m_image.shape[0]), q_valid])
            if self.training and self.queue_size:
                self._pending.append((m_image, m_text, all_labels))
        positives = torch.arange(labels.shape[0], device=labels.device) + offset
        opts = {"gamma": self.gamma, "fn_threshold": self.fn_threshold}
        # one weight matrix for both directions: both query with the batch's labels
        weights = wsc_weight_matrix(
            labels, key_labels, positives, **opts, fn_removal=self.fn_removal, key_valid=valid
        )
        log_weights, scale = weights.log(), outputs.scale
        i2t = wsc_direction_loss(outputs.image_emb, text_keys, scale, log_weights, positives)
        t2i = wsc_direction_loss(outputs.text_emb, image_keys, scale, log_weights, positives)
        removed, mean_weight = wsc_weight_stats(weights, positives, valid)
        scalars: dict[str, Tensor | float] = {
            "false_negatives": removed.float(),
            "negative_weight": mean_weight,
        }
        if self.queue_size:
            scalars["queue_fill"] = self.queue_fill.float() / self.queue_size
        return ObjectiveOutput(losses={"loss": (i2t + t2i) / 2}, scalars=scalars)

    # -- after the optimiser step ------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, encoder: DualEncoder, taken: Tensor | None = None) -> None:
        if self.momentum_encoder is None or self.momentum is None:
            return
        pending, self._pending = self._pending, []
        pairs = [  # a frozen tower never moves: its copy already equals it
            (key, param.detach())
            for key, param in zip(self.momentum_encoder.parameters(), encoder.parameters())
            if param.requires_grad
        ]
        if pairs:  # one fused multi-tensor op instead of a kernel pair per parameter
            keys, online = (list(t) for t in zip(*pairs))
            step = 1.0 - self.momentum
            # a dropped step (taken = 0) moves nothing: lerp by 0 leaves the keys as they are
            weight = step if taken is None else [taken * step] * len(keys)
            torch._foreach_lerp_(keys, online, weight)
        for key_buffer, buffer in zip(self.momentum_encoder.buffers(), encoder.buffers()):
            key_buffer.copy_(buffer)  # normalisation statistics follow the online encoder
        for image, text, labels in pending:
            self._enqueue(image, text, labels, taken)

    def _enqueue(
        self, image: Tensor, text: Tensor, labels: Tensor, taken: Tensor | None = None
    ) -> None:
        """Write the newest keys at the pointer, wrapping around: a ring of ``queue_size`` slots.

        Any batch size fits, so a batch shortened by skipped bad images (``data.bad_input:
        skip``) or an uneven last batch moves the ring by its own length. Pointer and fill stay
        on the device; a dropped step (``taken`` = 0) rewrites its slots with what they held and
        moves neither."""
        if labels.shape[0] > self.queue_size:  # only the newest keys fit
            image, text, labels = (t[-self.queue_size :] for t in (image, text, labels))
        n = image.shape[0]
        if self.label_queue.shape != (self.queue_size, labels.shape[1]):
            self.label_queue = labels.new_zeros(self.queue_size, labels.shape[1])
        slots = (self.queue_ptr + torch.arange(n, device=self.queue_ptr.device)) % self.queue_size
        moved = n if taken is None else (taken * n).long()
        for queue, new in ((self.image_queue, image), (self.text_queue, text)):
            new = new.to(queue)
            queue[slots] = new if taken is None else torch.where(taken > 0, new, queue[slots])
        new = labels.to(self.label_queue)
        if taken is not None:
            new = torch.where(taken > 0, new, self.label_queue[slots])
        self.label_queue[slots] = new
        self.queue_ptr.copy_((self.queue_ptr + moved) % self.queue_size)
        self.queue_fill.copy_((self.queue_fill + moved).clamp_max(self.queue_size))

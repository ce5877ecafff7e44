"""KeepFIT v2's generative term ``L_gen`` (docs/objectives.md §5; this project's formulation).

A small transformer decoder writes each expert caption token by token while cross-attending to
the image's dense feature tokens. Contrast only needs what separates captions in a batch; a
caption names local findings (drusen at the macula, flame haemorrhages by the disc), so
predicting it token by token pushes the image tower to keep those details in its feature map.

The decoder reuses the text tower's tokenizer: the expert batch is already tokenised for the
text tower, so its ``input_ids`` are the teacher-forcing targets ([CLS] caption [SEP] padding
for BERT-style tokenizers: [CLS] starts generation, [SEP] ends it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from fundus_lit.core.distributed import sum_over_ranks, world
from fundus_lit.data.batch import Batch
from fundus_lit.models.captioner import CaptionDecoder, caption_loss, caption_targets
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.base import Objective, ObjectiveOutput

if TYPE_CHECKING:
    from fundus_lit.models.dual_encoder import DualEncoder


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(pad, bos, eos) ids of a tokenizer: BERT's [PAD]/[CLS]/[SEP], else its pad/bos/eos."""
    pad = tokenizer.pad_token_id
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if None in (pad, bos, eos):
        raise ValueError(
            f"the text tower's tokenizer ({type(tokenizer).__name__}) lacks a pad, start or end "
            "token; the caption decoder needs all three to know where captions begin and end"
        )
    return int(pad), int(bos), int(eos)


class CaptionObjective(Objective):
    """Teacher-forced token cross-entropy of a caption decoder over the stream's text.

    The loss is the mean over every caption token of the global batch: under DDP each rank
    divides its token sum by the token count of all ranks (times the world size, since DDP
    averages gradients), so R ranks compute, in value (mean over ranks) and in gradient, what one
    process computes on the concatenated batch, whatever each rank's caption lengths.

    Args:
        weight: ``w_g`` (KeepFIT v2's generative weight; 1 in this project's recipes).
        name: Prefix of the logged values.
        stream: ``expert`` (atlas captions, KeepFIT v2) or ``public`` (e.g. report datasets).
        dim: Width of the decoder.
        layers: Decoder layers.
        heads: Attention heads (self and cross attention).
        dropout: Dropout inside the decoder layers.
        memory_tokens: Rows of the learned position table of the image tokens (resampled to the
            actual grid; 256 = a 16 x 16 map, ResNet-50 at 512 px).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"feature_map"})
    default_name = "caption"

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        stream: str = "expert",
        dim: int = 256,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        memory_tokens: int = 256,
    ) -> None:
        super().__init__(weight, name, stream)
        self.dim, self.layers, self.heads = dim, layers, heads
        self.dropout, self.memory_tokens = dropout, memory_tokens
        self.decoder: CaptionDecoder | None = None

    def attach(self, encoder: DualEncoder, batch_size: int) -> None:
        from fundus_lit.core.resolve import load_tokenizer
        from fundus_lit.models.decoders import feature_channels_and_strides

        cfg = encoder.text.cfg
        tokenizer = load_tokenizer(cfg.name, cfg.trust_remote_code)
        pad, bos, eos = special_ids(tokenizer)
        channels, _ = feature_channels_and_strides(encoder.vision.model)
        self.decoder = CaptionDecoder(
            vocab_size=max(len(tokenizer), int(encoder.text.model.config.vocab_size)),
            feature_dim=channels[-1],
            dim=self.dim,
            layers=self.layers,
            heads=self.heads,
            max_length=cfg.max_length,
            pad_id=pad,
            bos_id=bos,
            eos_id=eos,
            dropout=self.dropout,
            memory_tokens=self.memory_tokens,
        )

    def forward(self, outputs: ModelOutputs, batch: Batch) -> ObjectiveOutput:
        outputs, batch = self.select(outputs, batch)
        assert self.decoder is not None, "attach() builds the decoder"
        if outputs.feature_map is None:
            raise ValueError(f"objective {self.name!r} needs the image feature map")
        ids, mask = batch.input_ids, batch.attention_mask
        logits = self.decoder(outputs.feature_map.float(), ids, mask)
        total = caption_loss(logits, ids, mask, self.decoder.pad_id, reduction="sum")
        targets, keep = caption_targets(ids, mask, self.decoder.pad_id)
        tokens = keep.sum()
        loss = total * world()[1] / sum_over_ranks(tokens).clamp_min(1)
        with torch.no_grad():
            hits = (logits.argmax(-1) == targets) & keep
            accuracy = hits.sum() / tokens.clamp_min(1)
        return ObjectiveOutput(losses={"loss": loss}, scalars={"token_accuracy": accuracy})

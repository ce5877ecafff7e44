"""KeepFIT v1's expert-knowledge revision (docs/objectives.md §5).

Public images attend over the expert set's image embeddings and read out its text embeddings;
pulling that readout towards the public image's own text embedding injects the atlas captions'
knowledge into the shared space. The expert stream's CLIP term is a plain
``CLIPObjective(stream: expert)`` in the recipe, so either term can be ablated on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from fundus_lit.core.distributed import gather_with_grad
from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.base import Objective, ObjectiveOutput

if TYPE_CHECKING:
    from fundus_lit.models.dual_encoder import DualEncoder


def revision_readout(
    attention: nn.MultiheadAttention, image_emb: Tensor, expert_image: Tensor, expert_text: Tensor
) -> tuple[Tensor, Tensor]:
    """``r_i = MHA(query = u_i, keys = expert image embeddings, values = expert text
    embeddings)``: (B, D) readouts and the (heads, B, K) attention, softmax over the K keys."""
    revised, weights = attention(
        image_emb[None], expert_image[None], expert_text[None], average_attn_weights=False
    )
    return revised[0], weights[0]


class RevisionObjective(Objective):
    """``MSE(t_i, r_i)`` between each public text embedding and its revision readout.

    Keys and values are the expert batch gathered from every rank (with gradient to their
    owners), like the contrastive objectives' columns. It runs on training steps, which carry
    the expert stream.

    Args:
        weight: ``w_rev`` (KeepFIT's default 100).
        name: Prefix of the logged values.
        heads: Heads of the revision attention (KeepFIT: 2).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"image_emb", "text_emb"})
    default_name = "revision"

    def __init__(self, weight: float = 100.0, name: str | None = None, heads: int = 2) -> None:
        super().__init__(weight, name, stream="expert")
        self.heads = heads
        self.attention: nn.MultiheadAttention | None = None

    def attach(self, encoder: DualEncoder, batch_size: int) -> None:
        self.attention = nn.MultiheadAttention(encoder.embed_dim, self.heads, batch_first=True)

    def forward(self, outputs: ModelOutputs, batch: Batch) -> ObjectiveOutput:
        expert, _ = self.select(outputs, batch)
        assert self.attention is not None, "attach() builds the attention"
        assert outputs.text_emb is not None and expert.text_emb is not None
        keys, _ = gather_with_grad(expert.image_emb)
        values, _ = gather_with_grad(expert.text_emb)
        revised, weights = revision_readout(
            self.attention, outputs.image_emb, keys.to(outputs.image_emb), values.to(keys)
        )
        loss = F.mse_loss(revised.float(), outputs.text_emb.float())
        focus = weights.max(dim=-1).values.mean().detach()  # how peaked the attention is
        return ObjectiveOutput(losses={"loss": loss}, scalars={"attention_peak": focus})

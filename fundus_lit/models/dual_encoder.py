"""Image tower + text tower + projection heads + the learnable logit scale."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.models.text import TextConfig, TextTower
from fundus_lit.models.vision import VisionConfig, VisionTower

Projection = Literal["linear", "mlp"]
MAX_LOG_SCALE = math.log(100.0)


def projection_head(in_dim: int, out_dim: int, kind: Projection) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))


class DualEncoder(nn.Module):
    """The model every recipe trains; objectives read its :class:`ModelOutputs`.

    Args:
        vision: Image tower settings.
        text: Text tower settings.
        embed_dim: Dimension D of the shared embedding space.
        image_size: Input resolution (ViTs size their position embeddings from it).
        projection: ``linear`` or a two-layer ``mlp`` head on each tower.
        temperature: Initial temperature; the learnable ``theta = log(1/temperature)`` is clamped
            to ``[0, log 100]`` at every use, as the spec prescribes.
    """

    def __init__(
        self,
        vision: VisionConfig,
        text: TextConfig,
        embed_dim: int = 512,
        image_size: int = 224,
        projection: Projection = "linear",
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.vision = VisionTower(vision, image_size)
        self.text = TextTower(text)
        self.image_proj = projection_head(self.vision.num_features, embed_dim, projection)
        self.text_proj = projection_head(self.text.num_features, embed_dim, projection)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(0.0, MAX_LOG_SCALE).exp()

    def encode_image(
        self, images: Tensor, dense: bool = False, attention: bool = False
    ) -> dict[str, Tensor | list[Tensor]]:
        """``emb`` (B, D) normalised, ``pooled`` features, and dense features or the attention
        pool's attention when asked."""
        out = self.vision(images, dense=dense, attention=attention)
        out["emb"] = F.normalize(self.image_proj(out["pooled"]), dim=-1)
        return out

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor, token_states: bool = False
    ) -> dict[str, Tensor]:
        out = self.text(input_ids, attention_mask, token_states=token_states)
        out["emb"] = F.normalize(self.text_proj(out["pooled"]), dim=-1)
        return out

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        requires: frozenset[str] = frozenset({"image_emb", "text_emb"}),
    ) -> ModelOutputs:
        """Run the towers and return only what ``requires`` asks for beyond the embeddings."""
        dense = bool(requires & {"feature_map", "multiscale"})
        img = self.encode_image(images, dense=dense, attention="attention" in requires)
        txt = None
        if input_ids is not None and attention_mask is not None:
            txt = self.encode_text(input_ids, attention_mask, "token_states" in requires)
        return ModelOutputs(
            image_emb=img["emb"],
            text_emb=None if txt is None else txt["emb"],
            scale=self.scale(),
            image_features=img["pooled"],
            feature_map=img.get("feature_map") if "feature_map" in requires else None,
            multiscale=img.get("multiscale") if "multiscale" in requires else None,
            token_states=None if txt is None else txt.get("token_states"),
            attention=img.get("attention"),
        )

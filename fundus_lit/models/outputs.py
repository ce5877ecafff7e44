"""What the dual encoder hands to objectives."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

#: Output names an objective may declare in ``Objective.requires``.
GLOBAL_OUTPUTS = frozenset({"image_emb", "text_emb"})
DENSE_OUTPUTS = frozenset(
    {"image_features", "feature_map", "multiscale", "token_states", "attention"}
)
ALL_OUTPUTS = GLOBAL_OUTPUTS | DENSE_OUTPUTS


@dataclass
class ModelOutputs:
    """Embeddings and, on request, intermediate features of one forward pass.

    ``image_emb`` / ``text_emb`` are L2-normalised projections (B, D); ``scale`` is the clamped,
    exponentiated logit scale s. The dense entries are filled only when an objective asks for them,
    so CLIP-style recipes pay nothing for G2D-style features.
    """

    image_emb: Tensor
    text_emb: Tensor | None
    scale: Tensor
    image_features: Tensor | None = None  # pooled backbone features before projection (B, C)
    feature_map: Tensor | None = None  # final backbone feature map (B, C, h, w)
    multiscale: list[Tensor] | None = None  # backbone features from high to low resolution
    token_states: Tensor | None = None  # last hidden states of the text tower (B, T, H)
    attention: Tensor | None = None  # attention pool's per-head attention (B, heads, h, w)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the expert stream's outputs


def full_precision(outputs: ModelOutputs) -> ModelOutputs:
    """The global embeddings and scale in fp32 (dense features stay as computed)."""
    text = None if outputs.text_emb is None else outputs.text_emb.float()
    extra = {
        k: full_precision(v) if isinstance(v, ModelOutputs) else v for k, v in outputs.extra.items()
    }
    return replace(
        outputs,
        image_emb=outputs.image_emb.float(),
        text_emb=text,
        scale=outputs.scale.float(),
        extra=extra,
    )

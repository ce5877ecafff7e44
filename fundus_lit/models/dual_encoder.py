"""Image tower + text tower + projection heads + the learnable logit scale."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fundus_lit.core.dataclasses import known_fields
from fundus_lit.core.text_keys import TextKey
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.models.text import TextConfig, TextTower
from fundus_lit.models.vision import VisionConfig, VisionTower

Projection = Literal["linear", "mlp", "normalized_linear"]
MAX_LOG_SCALE = math.log(100.0)


class NormalizedLinear(nn.Linear):
    """L2-normalise the features, then project without bias: FLAIR's and KeepFIT's head, so
    their published weights load as they were trained."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x / x.norm(dim=-1, keepdim=True))


def projection_head(in_dim: int, out_dim: int, kind: Projection) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    if kind == "normalized_linear":
        return NormalizedLinear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))


@dataclass
class DualEncoderConfig:
    """Everything that determines a :class:`DualEncoder`'s architecture, in one place.

    Training saves :meth:`to_dict` in the checkpoint's hyper-parameters and the export writes it
    to ``config.json``; evaluation, ``load_pretrained`` and export rebuild the model with
    :meth:`from_dict` and :meth:`DualEncoder.from_config`. A new encoder argument is one field
    here, not an edit in every place that rebuilds a model.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    image_size: int = 224
    projection: Projection = "linear"
    temperature: float = 0.07

    def __post_init__(self) -> None:
        if not isinstance(self.vision, VisionConfig):  # a mapping; anything else is refused
            self.vision = VisionConfig(**known_fields(VisionConfig, self.vision))
        if not isinstance(self.text, TextConfig):
            self.text = TextConfig(**known_fields(TextConfig, self.text))

    def to_dict(self) -> dict:
        """Plain values only, so a checkpoint holding it loads with ``weights_only=True``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DualEncoderConfig:
        """From :meth:`to_dict`'s output, a checkpoint's hyper-parameters or an export's config
        (keys that are not encoder settings are ignored; missing ones take their defaults)."""
        return cls(**known_fields(cls, values))

    def for_saved_weights(self, text_name: str | None = None) -> DualEncoderConfig:
        """The same architecture with every download, local weight file and compilation off: what
        rebuilding a model whose weights come from a checkpoint or an export needs. ``text_name``
        points the text tower at another folder (an export's own text config)."""
        vision = replace(self.vision, pretrained=False, weights=None, compile=False)
        text = replace(self.text, pretrained=False, init_weights=None, compile=False)
        if text_name is not None:
            text = replace(text, name=text_name)
        return replace(self, vision=vision, text=text)


class DualEncoder(nn.Module):
    """The model every recipe trains; objectives read its :class:`ModelOutputs`.

    Args:
        vision: Image tower settings.
        text: Text tower settings.
        embed_dim: Dimension D of the shared embedding space.
        image_size: Input resolution (ViTs size their position embeddings from it).
        projection: ``linear``, a two-layer ``mlp``, or ``normalized_linear`` (features
            L2-normalised before a linear map: FLAIR's head) on each tower.
        temperature: Initial temperature; the learnable ``theta = log(1/temperature)`` is clamped
            to ``[0, log 100]`` at every use, as docs/objectives.md §0 prescribes.
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
        self.config = DualEncoderConfig(
            vision, text, embed_dim, image_size, projection, temperature
        )

    @classmethod
    def from_config(cls, config: DualEncoderConfig) -> DualEncoder:
        return cls(
            config.vision,
            config.text,
            config.embed_dim,
            config.image_size,
            config.projection,
            config.temperature,
        )

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
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_states: bool = False,
        keys: Sequence[TextKey] | None = None,
    ) -> dict[str, Tensor]:
        """``keys``: the rows' host keys (:attr:`~fundus_lit.data.batch.Batch.text_keys`) for
        a frozen tower's cache."""
        out = self.text(input_ids, attention_mask, token_states=token_states, keys=keys)
        out["emb"] = F.normalize(self.text_proj(out["pooled"]), dim=-1)
        return out

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        requires: frozenset[str] = frozenset({"image_emb", "text_emb"}),
        text_keys: Sequence[TextKey] | None = None,
    ) -> ModelOutputs:
        """Run the towers and return only what ``requires`` asks for beyond the embeddings."""
        dense = bool(requires & {"feature_map", "multiscale"})
        img = self.encode_image(images, dense=dense, attention="attention" in requires)
        txt = None
        if input_ids is not None and attention_mask is not None:
            states = "token_states" in requires
            txt = self.encode_text(input_ids, attention_mask, states, text_keys)
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

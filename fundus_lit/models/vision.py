"""Image tower: any timm model, returning pooled features and, on request, dense features."""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import Tensor, nn

from fundus_lit.models.resolve import (
    HUB_OFFLINE_HINT,
    ModelNotFoundError,
    hub_offline,
    resolve_reference,
)
from fundus_lit.models.tower import Tower


@dataclass
class VisionConfig:
    """Image tower settings.

    Attributes:
        name: timm model name, e.g. ``resnet50`` or ``vit_base_patch16_224``.
        pretrained: Load timm's pretrained weights (from the hub, or from ``weights``).
        weights: Local weights file (``.safetensors``/``.pth``) to load instead of the hub; implies
            pretrained weights.
        freeze: Keep the tower fixed (no gradient, eval mode).
        drop_path_rate: Stochastic depth for models that support it.
    """

    name: str = "resnet50"
    pretrained: bool = False
    weights: str | None = None
    freeze: bool = False
    drop_path_rate: float = 0.0


def create_timm_model(cfg: VisionConfig, image_size: int) -> nn.Module:
    """Create the backbone without a classifier head, sized for ``image_size`` where it matters."""
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise ModelNotFoundError(
            f"unknown timm model {cfg.name!r}" + (f"; similar names: {close}" if close else "")
        )
    kwargs: dict = {"num_classes": 0}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    pretrained = cfg.pretrained or cfg.weights is not None
    if cfg.weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": resolve_reference(cfg.weights)}
    elif pretrained and hub_offline():
        raise ModelNotFoundError(
            f"timm model {cfg.name!r}: pretrained weights requested but HF_HUB_OFFLINE is set. "
            + HUB_OFFLINE_HINT
        )
    try:
        try:  # ViT-style models size their position embeddings from img_size
            return timm.create_model(cfg.name, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError:
            return timm.create_model(cfg.name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as err:
        if "Unknown model" in str(err):
            raise
        raise ModelNotFoundError(
            f"could not load pretrained weights for timm model {cfg.name!r}: {err}. "
            + HUB_OFFLINE_HINT
        ) from err


class VisionTower(Tower):
    """Wraps a timm backbone; takes uint8 or [0, 1] images and normalises them on the device.

    Normalising here (not in the data pipeline) keeps the data layer model-agnostic and lets the
    loader ship uint8 tensors.
    """

    def __init__(self, cfg: VisionConfig, image_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = create_timm_model(cfg, image_size)
        data_cfg = timm.data.resolve_model_data_config(self.model)
        self.register_buffer("mean", torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(data_cfg["std"]).view(1, 3, 1, 1), False)
        self.num_features: int = self.model.num_features
        self.set_frozen(cfg.freeze)

    def normalize(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std

    def forward(self, images: Tensor, dense: bool = False) -> dict[str, Tensor | list[Tensor]]:
        """Pooled features (B, C); with ``dense`` also the feature map and multi-scale features."""
        x = self.normalize(images)
        if not dense:
            return {"pooled": self.model(x)}
        final, maps = self.model.forward_intermediates(x, output_fmt="NCHW")
        pooled = self.model.forward_head(final, pre_logits=True)
        return {"pooled": pooled, "feature_map": maps[-1], "multiscale": list(maps)}

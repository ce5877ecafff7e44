"""Image tower: any timm model, returning pooled features and, on request, dense features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import timm
import torch
from torch import Tensor, nn

from fundus_lit.core.resolve import (
    HUB_OFFLINE_HINT,
    ModelNotFoundError,
    hub_offline,
    optional_path,
    resolve_reference,
)
from fundus_lit.models.attention_pool import AttentionPool, grid_tokens
from fundus_lit.models.tower import Tower, compile_in_place


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
        pool: ``default`` keeps the backbone's own pooling; ``attention`` replaces it with an
            attention pool (query = mean of the final grid tokens) whose attention over the grid
            G2D turns into pseudo masks.
        pool_heads: Heads of the attention pool.
        channels_last: Run the backbone in channels-last memory format (NHWC): faster
            convolutions with tensor cores under bf16/fp16 on GPUs; no effect on results.
        compile: ``torch.compile`` the backbone's forward (first steps are slow while it
            compiles; pays off on long GPU runs).
        compile_options: Keyword arguments of ``torch.compile``, e.g. ``{mode: max-autotune}``.
        model_kwargs: Extra keyword arguments of ``timm.create_model``, to build a variant from
            the config instead of registering a new model: ``{channels: [32, 64, 128, 256],
            stem_width: 32}`` is a ResNet-18 at a quarter of the compute.
        mean: Per-channel mean subtracted from [0, 1] pixels; None = the timm model's own.
        std: Per-channel divisor after the mean; None = the timm model's own. Weights trained
            elsewhere need their own: FLAIR feeds [0, 1] pixels unnormalised (mean 0, std 1).
    """

    name: str = "resnet50"
    pretrained: bool = False
    weights: str | None = None
    freeze: bool = False
    drop_path_rate: float = 0.0
    pool: Literal["default", "attention"] = "default"
    pool_heads: int = 8
    channels_last: bool = False
    compile: bool = False
    compile_options: dict[str, Any] | None = None
    model_kwargs: dict[str, Any] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def __post_init__(self) -> None:
        self.weights = optional_path(self.weights)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise ValueError(f"vision.{name} needs 3 values (R, G, B), got {value}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"vision.std must be positive, got {self.std}")


def create_timm_model(cfg: VisionConfig, image_size: int) -> nn.Module:
    """Create the backbone without a classifier head, sized for ``image_size`` where it matters."""
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise ModelNotFoundError(
            f"unknown timm model {cfg.name!r}" + (f"; similar names: {close}" if close else "")
        )
    kwargs: dict = {**(cfg.model_kwargs or {}), "num_classes": 0}
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
            pass
        try:
            return timm.create_model(cfg.name, pretrained=pretrained, **kwargs)
        except TypeError as err:
            if not cfg.model_kwargs:
                raise
            raise ModelNotFoundError(
                f"timm model {cfg.name!r} does not take vision.model_kwargs "
                f"{sorted(cfg.model_kwargs)}: {err}"
            ) from err
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
        mean = data_cfg["mean"] if cfg.mean is None else cfg.mean
        std = data_cfg["std"] if cfg.std is None else cfg.std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), False)
        self.num_features: int = self.model.num_features
        self.pool: AttentionPool | None = None
        if cfg.pool == "attention":
            from fundus_lit.models.decoders import feature_channels_and_strides

            channels, strides = feature_channels_and_strides(self.model)
            self.stride = strides[-1]
            grid = (max(1, image_size // self.stride),) * 2
            self.pool = AttentionPool(channels[-1], grid, heads=cfg.pool_heads)
            self.num_features = channels[-1]
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_in_place(self.model, cfg.compile_options)
        self.set_frozen(cfg.freeze)

    def normalize(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def forward(
        self, images: Tensor, dense: bool = False, attention: bool = False
    ) -> dict[str, Tensor | list[Tensor]]:
        """Pooled features (B, C); with ``dense`` also the feature map and multi-scale features,
        with ``attention`` the attention pool's per-head attention over the grid (B, heads, h, w).
        """
        if attention and self.pool is None:
            raise ValueError(
                "attention maps need the attention pool: set model.vision.pool: attention"
            )
        x = self.normalize(images)
        if self.pool is None:
            if not dense:
                return {"pooled": self.model(x)}
            final, maps = self.model.forward_intermediates(x, output_fmt="NCHW")
            pooled = self.model.forward_head(final, pre_logits=True)
            return {"pooled": pooled, "feature_map": maps[-1], "multiscale": list(maps)}
        out: dict[str, Tensor | list[Tensor]] = {}
        if dense:
            final, maps = self.model.forward_intermediates(x, output_fmt="NCHW")
            out |= {"feature_map": maps[-1], "multiscale": list(maps)}
        else:
            final = self.model.forward_features(x)
        grid = (images.shape[-2] // self.stride, images.shape[-1] // self.stride)
        if final.ndim == 4:  # CNN: (B, C, h, w)
            tokens, grid = grid_tokens(final)
        else:  # ViT: (B, prefix + h*w, C)
            tokens = final[:, getattr(self.model, "num_prefix_tokens", 0) :]
        pooled, attn = self.pool(tokens, return_attention=attention, grid=grid)
        out["pooled"] = pooled
        if attention:
            out["attention"] = attn
        return out

"""Dense decoders for G2D pseudo-segmentation: backbone features -> one logit map per image.

Both decoders share ``forward(features, size)`` where ``features`` is the list of NCHW maps from
timm's ``forward_intermediates`` (shallow -> deep, the order of ``model.feature_info``), so the
objective can call either without knowing the backbone family.

Design choices, and why:

* GroupNorm, not BatchNorm: pretraining batches are small per device (high-resolution fundus
  images), BatchNorm statistics would be noisy and differ between DDP ranks without SyncBN, and
  the deepest maps of a batch of one are 1 x 1 in places. GroupNorm is batch-independent and
  behaves the same in train and eval mode.
* Nearest-neighbour resizing of feature maps: the backward of ``F.interpolate``'s bilinear mode
  on CUDA has no deterministic implementation (it raises under
  ``torch.use_deterministic_algorithms``), and the 3x3 convolutions after each resize smooth the
  blockiness away anyway.
* Resizing to the skip's exact size instead of a fixed x2: odd input sizes give maps whose sizes
  are not exact powers of two apart (e.g. 97 -> 49 -> 25 -> ...).
* An output stride (``output_stride``, the objective's ``decoder_stride``): the blocks at stride 2
  and 1 work on the largest maps, so at narrow widths they are most of the decoder's cost, for
  masks drawn from a stride-32 attention grid. Stopping earlier and resizing the logits to the
  input size keeps the loss at input size. Logits are resized bilinearly (no blocks to hide
  nearest's steps) as a matmul with fixed interpolation matrices: ``F.interpolate``'s values, a
  deterministic backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

DecoderKind = Literal["auto", "unet", "progressive"]

__all__ = [
    "DecoderKind",
    "ProgressiveDecoder",
    "UNetDecoder",
    "build_decoder",
    "check_output_stride",
    "default_taper",
    "feature_channels_and_strides",
]


def _num_groups(channels: int) -> int:
    """Largest power-of-two group count <= 32 that divides ``channels`` with >= 4 per group.

    At least four channels per group keeps the statistics meaningful on the thin, high-resolution
    stages (16 channels -> 4 groups) while wide stages get the usual 32.
    """
    groups = 1
    while groups * 2 <= 32 and channels % (groups * 2) == 0 and channels // (groups * 2) >= 4:
        groups *= 2
    return groups


def default_taper(n: int, start: int = 256, floor: int = 16) -> list[int]:
    """Halving channel widths ``start, start/2, ...`` clipped at ``floor``.

    Resolution doubles at every stage, so halving the width keeps each stage's cost roughly flat;
    the floor stops the full-resolution stages from becoming too thin to be useful.
    """
    return [max(floor, start >> i) for i in range(n)]


def _upsample_steps(stride: float) -> int:
    """How many x2 steps take a map at relative ``stride`` to at least the target resolution."""
    return math.ceil(math.log2(stride)) if stride > 1 else 0


def check_output_stride(value: int, coarsest: int | None = None, key: str = "output_stride") -> int:
    """``value`` if a power of two (each stage halves the stride) below ``coarsest`` (if given)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(
            f"{key} must be a power of two (1: logits at input resolution; 2, 4, ...: the"
            f" decoder stops at that stride and the logits are upsampled), got {value!r}"
        )
    if coarsest is not None and value >= coarsest:
        valid = ", ".join(str(1 << i) for i in range(_upsample_steps(coarsest)))
        raise ValueError(
            f"{key} {value} leaves no decoder stage: the backbone's coarsest map is at stride"
            f" {coarsest}; use one of {valid}"
        )
    return value


def _interpolation_matrix(size_out: int, size_in: int, like: Tensor) -> Tensor:
    """(size_out, size_in) weights of 1-D linear interpolation with half-pixel centres."""
    pos = (torch.arange(size_out, device=like.device) + 0.5) * (size_in / size_out) - 0.5
    pos = pos.clamp(0, size_in - 1)
    low = pos.floor().long()
    frac = (pos - low).to(like.dtype)
    weights = torch.zeros(size_out, size_in, device=like.device, dtype=like.dtype)
    rows = torch.arange(size_out, device=like.device)
    weights[rows, low] += 1 - frac
    weights[rows, (low + 1).clamp(max=size_in - 1)] += frac
    return weights


def _bilinear(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``) as two matmuls; see the module docstring."""
    if tuple(x.shape[-2:]) == (int(size[0]), int(size[1])):
        return x
    rows, cols = (_interpolation_matrix(int(n), m, x) for n, m in zip(size, x.shape[-2:]))
    return rows @ x @ cols.T


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest resize, skipped when already at ``size`` (see the module docstring for why)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="nearest")


class ConvNormAct(nn.Sequential):
    """3x3 convolution (no bias: the norm's shift replaces it), GroupNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_num_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Resize to the target size, concatenate the skip (if any), two conv-norm-act layers."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels + skip_channels, out_channels)
        self.conv2 = ConvNormAct(out_channels, out_channels)

    def forward(self, x: Tensor, size: Sequence[int], skip: Tensor | None = None) -> Tensor:
        x = _resize(x, size)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """U-Net decoder over a CNN's multi-scale maps, ending at ``output_stride`` (default: input
    resolution), its logits then resized bilinearly to the requested size.

    One block per skip at or above ``output_stride`` (deep -> shallow), then skip-less x2 blocks
    until ``output_stride``, so that a backbone whose shallowest map is at stride 2 (ResNet) or 4
    (ConvNeXt, Swin) still ends at full resolution with learned upsampling rather than one big
    interpolation when ``output_stride`` is 1.

    Args:
        channels: Channels of each feature map, shallow -> deep (timm ``feature_info`` order).
        strides: Reduction of each feature map w.r.t. the input, same order.
        decoder_channels: Width of each decoder block, deep -> shallow; one per block, i.e. a
            skip block per skip map at or above ``output_stride`` plus the x2 blocks from there
            down to ``output_stride`` (ResNet: 5 at stride 1, 4 at 2, 3 at 4).
            Default: ``default_taper`` (256, 128, 64, 32, 16, ...).
        out_channels: Logit channels of the output.
        width: The first (deepest) block's width of the default taper.
        output_stride: Stride at which the blocks stop: a power of two below ``max(strides)``.
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        decoder_channels: Sequence[int] | None = None,
        out_channels: int = 1,
        width: int = 256,
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        if not channels or len(channels) != len(strides):
            raise ValueError(
                f"channels and strides must be non-empty and of equal length, got {len(channels)}"
                f" channels and {len(strides)} strides"
            )
        self.channels = [int(c) for c in channels]
        self.strides = [int(s) for s in strides]
        self.output_stride = check_output_stride(output_stride, max(self.strides))
        n_skip = sum(s >= output_stride for s in self.strides[:-1])
        reached = min([s for s in self.strides[:-1] if s >= output_stride] or self.strides[-1:])
        n_extra = _upsample_steps(reached / output_stride)
        n_blocks = n_skip + n_extra
        widths = (
            default_taper(n_blocks, start=width)
            if decoder_channels is None
            else list(decoder_channels)
        )
        if len(widths) != n_blocks:
            raise ValueError(
                f"decoder_channels needs {n_blocks} entries ({n_skip} skip + {n_extra} upsampling"
                f" blocks) for strides {self.strides} and output stride {output_stride}, got"
                f" {len(widths)}"
            )
        skips = self.channels[-2::-1]  # deep -> shallow, deepest map excluded
        in_widths = [self.channels[-1], *widths[:-1]]
        self.blocks = nn.ModuleList(
            UpBlock(c_in, skips[i] if i < n_skip else 0, c_out)
            for i, (c_in, c_out) in enumerate(zip(in_widths, widths))
        )
        self.n_skip = n_skip
        self.head = nn.Conv2d(widths[-1] if widths else self.channels[-1], out_channels, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Multi-scale maps (shallow -> deep) -> (B, out_channels, *size) logits."""
        if len(features) != len(self.channels):
            raise ValueError(
                f"UNetDecoder was built for {len(self.channels)} feature maps, got"
                f" {len(features)}; pass every map of forward_intermediates, shallow -> deep"
            )
        skips = list(features[-2::-1])
        x = features[-1]
        for i, block in enumerate(self.blocks):
            if i < self.n_skip:
                x = block(x, skips[i].shape[-2:], skips[i])
            else:
                x = block(x, (x.shape[-2] * 2, x.shape[-1] * 2))
        return _bilinear(self.head(x), size)


class ProgressiveDecoder(nn.Module):
    """Progressive x2 upsampling decoder for single-stride (ViT) patch grids.

    A ViT has no shallow high-resolution maps to skip from, so the grid is projected, then
    repeatedly upsampled x2 and refined by conv-norm-act until it reaches at least the resolution
    of ``output_stride`` (default: the input's), and its logits are finally resized bilinearly to
    exactly ``size`` (handles patch sizes that are not powers of two and inputs that are not
    multiples of the patch size).

    Args:
        in_channels: Channels of the patch grid (the ViT width).
        stride: Patch size, i.e. the grid's reduction w.r.t. the input.
        hidden: Width after the projection; each upsampling stage halves it (floor 16).
        out_channels: Logit channels of the output.
        output_stride: Stride at which the stages stop: a power of two below ``stride``.
    """

    def __init__(
        self,
        in_channels: int,
        stride: int,
        hidden: int = 256,
        out_channels: int = 1,
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.stride = int(stride)
        self.output_stride = check_output_stride(output_stride, self.stride)
        widths = default_taper(_upsample_steps(self.stride / output_stride) + 1, start=hidden)
        # timm's ViT intermediates are taken before the final norm, so their scale grows with
        # depth; a per-token LayerNorm (what the ViT itself would apply) puts them back on scale.
        self.norm = LayerNorm2d(self.in_channels)
        self.proj = ConvNormAct(self.in_channels, widths[0])
        self.stages = nn.ModuleList(ConvNormAct(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Conv2d(widths[-1], out_channels, 1)

    def forward(self, features: Sequence[Tensor] | Tensor, size: tuple[int, int]) -> Tensor:
        """Patch grid (or the multi-scale list, of which the last map is used) -> logits."""
        x = features if isinstance(features, Tensor) else features[-1]
        x = self.proj(self.norm(x))
        for stage in self.stages:
            x = stage(_resize(x, (x.shape[-2] * 2, x.shape[-1] * 2)))
        return _bilinear(self.head(x), size)


def feature_channels_and_strides(model: nn.Module) -> tuple[list[int], list[int]]:
    """Channels and reductions of the maps ``forward_intermediates`` returns, shallow -> deep.

    Plain timm models (not ``features_only``) store ``feature_info`` as a list of dicts with
    ``num_chs``/``reduction``; ``features_only`` models store a ``FeatureInfo`` object. A wrapper
    holding the timm model as ``.model`` (e.g. ``VisionTower``) is unwrapped.
    """
    info = getattr(model, "feature_info", None)
    if info is None and isinstance(getattr(model, "model", None), nn.Module):
        info = getattr(model.model, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(model).__name__} has no timm feature_info to build a decoder from")
    if hasattr(info, "channels") and hasattr(info, "reduction"):
        return list(info.channels()), list(info.reduction())
    return [int(d["num_chs"]) for d in info], [int(d["reduction"]) for d in info]


def build_decoder(
    model: nn.Module,
    kind: DecoderKind = "auto",
    out_channels: int = 1,
    width: int = 256,
    decoder_channels: Sequence[int] | None = None,
    output_stride: int = 1,
) -> UNetDecoder | ProgressiveDecoder:
    """Decoder matching a timm backbone: U-Net for multi-stride CNNs, progressive for ViTs.

    ``auto`` decides from ``feature_info``: several distinct reductions mean there are skips to
    use (ResNet: 2..32, ConvNeXt/Swin: 4..32); a single reduction (ViT: every block at the patch
    stride) means there are none. ``width`` is the deepest block's width (halved per stage,
    floor 16); ``decoder_channels`` gives the U-Net's block widths one by one instead.
    ``output_stride`` is where the decoder stops before the bilinear resize of its logits.
    """
    channels, strides = feature_channels_and_strides(model)
    if kind == "auto":
        kind = "unet" if len(set(strides)) > 1 else "progressive"
    if kind == "unet":
        return UNetDecoder(channels, strides, decoder_channels, out_channels, width, output_stride)
    if kind == "progressive":
        if decoder_channels is not None:
            raise ValueError("decoder_channels sets a U-Net's blocks; use decoder_width here")
        return ProgressiveDecoder(channels[-1], strides[-1], width, out_channels, output_stride)
    raise ValueError(f"unknown decoder kind {kind!r}; expected 'auto', 'unet' or 'progressive'")

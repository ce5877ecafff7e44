"""G2D pure functions: pseudo masks from the pooling attention and the pseudo-segmentation loss.

docs/objectives.md §4. Everything here runs on the input's device without a host synchronisation (no
``.item()``, no value-dependent Python branches, no data-dependent shapes), so a training step on
the GPU never stalls on the mask computation. Branches below only look at shapes, dtypes and
Python arguments.

Decisions the G2D paper leaves open, made here (docs/objectives.md §4):

- Field of view vs quantile: pixels outside the aperture are set to 0 *and take part* in the
  quantile (step 3 comes before step 4, and "set to 0" only matters if the zeros are counted). The
  foreground budget is therefore ``1 - q`` of the whole map. The final mask is also ANDed with the
  aperture, because with ``>=`` and an aperture covering less than ``1 - q`` of the map the
  threshold is 0 and the zeros outside would otherwise pass it.
- Dice is computed per image and then averaged over the batch, so every image's mask counts the
  same whatever its size; ``eps`` is tiny (1e-6) so the unsmoothed reference formula of
  docs/objectives.md §4 holds at any resolution, not only approximately at large ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fundus_lit.core.dice import DiceInput

Smoothing = Literal["none", "gaussian", "bilateral"]


@dataclass(frozen=True)
class G2DPreset:
    """One reproducible set of G2D pseudo-segmentation settings.

    Attributes:
        quantile: q of the per-image threshold.
        strict: ``>`` (True) or ``>=`` (False) against the threshold.
        w_dice: Weight of ``1 - Dice``.
        w_bce: Weight of the BCE-with-logits term.
        dice_on: Dice on ``sigmoid(P)`` ("probs") or on the raw logits ("logits").
        warmup_steps: Optimiser steps trained on the global objective alone before L_PS joins.
        eps: Smoothing term of the Dice ratio.
    """

    quantile: float = 0.85
    strict: bool = False
    w_dice: float = 0.5
    w_bce: float = 0.5
    dice_on: DiceInput = "probs"
    warmup_steps: int = 0
    eps: float = 1e-6


# "paper" is the default; "code" reproduces the released implementation's choices
# (docs/objectives.md §4): L = (1 - dice_on_logits) + 0.2 * BCE with eps 1e-5, i.e. the Dice term
# weighted 1, not 0.5.
PRESETS: dict[str, G2DPreset] = {
    "paper": G2DPreset(),
    "code": G2DPreset(
        strict=True, w_dice=1.0, w_bce=0.2, dice_on="logits", warmup_steps=200, eps=1e-5
    ),
}


def _as_size(x: Tensor, size: int, mode: str) -> Tensor:
    """Resize only when needed: masks and guides usually already come at the decoder's size."""
    if x.shape[-2:] == (size, size):
        return x
    kwargs = {"antialias": True} if mode == "bilinear" else {}
    return F.interpolate(x, size=(size, size), mode=mode, **kwargs)


def _fov_at(fov: Tensor, size: int) -> Tensor:
    """(B|1, 1, size, size) bool aperture from a bool or float (> 0.5) mask of any resolution."""
    fov = fov.float() if fov.dtype == torch.bool else fov.to(torch.float32)
    return _as_size(fov, size, "nearest-exact") > 0.5


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def quantile_rows(values: Tensor, q: float) -> Tensor:
    """Per-row q-quantile with linear interpolation, equal to ``torch.quantile(values, q, dim=1)``.

    Written out because ``torch.quantile`` refuses inputs above 16M elements (a batch of 64 maps at
    512 x 512) and sorts anyway. The rank is computed in the input's dtype like torch does, and as
    a CPU scalar, so nothing waits on the device. The two agree to float rounding of the final
    interpolation, and a threshold strictly between the two neighbouring sorted values selects
    the same pixels wherever in that gap it lies.
    """
    n = values.shape[1]
    if values.dtype in _NUMPY_FLOATS:  # same rounding as a torch scalar op, without any op
        as_dtype = _NUMPY_FLOATS[values.dtype]
        rank = float(as_dtype(q) * as_dtype(n - 1))
    else:
        rank = float(torch.tensor(q, dtype=values.dtype) * (n - 1))
    below, above = math.floor(rank), math.ceil(rank)
    ordered = values.sort(dim=1).values
    return torch.lerp(ordered[:, below], ordered[:, above], rank - below)


def _gaussian_kernel(sigma: float, radius: int, device: torch.device) -> Tensor:
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_smooth(mask: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (truncated at 3 sigma) of a (B, C, H, W) mask, as float.

    Borders are replicated rather than zero-padded, so a mask touching the image edge is not eroded
    there. The result is continuous; callers re-binarise.
    """
    x = mask.to(torch.float32)
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    kernel = _gaussian_kernel(sigma, radius, x.device)
    channels = x.shape[1]
    rows = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    cols = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), rows, groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), cols, groups=channels)


def bilateral_smooth(
    mask: Tensor, guide: Tensor | None, sigma_space: float, sigma_range: float
) -> Tensor:
    """Joint bilateral filter of a (B, C, H, W) mask, guided by ``guide`` (B, G, H, W) or, when
    None, by the mask itself; float result.

    Self-guided, it removes isolated specks while keeping straight edges sharp (a Gaussian rounds
    them); image-guided, it snaps the mask to the image's edges. The window is truncated at
    2 sigma and visited one offset at a time, which keeps memory at a few copies of the mask
    instead of the k*k copies an ``unfold`` would need at 512 x 512.
    """
    x = mask.to(torch.float32)
    g = x if guide is None else guide.to(torch.float32)
    if sigma_space <= 0:
        return x
    radius = max(1, math.ceil(2 * sigma_space))
    height, width = x.shape[-2:]
    pad = (radius, radius, radius, radius)
    xp, gp = F.pad(x, pad, mode="replicate"), F.pad(g, pad, mode="replicate")
    num, den = torch.zeros_like(x), torch.zeros_like(x[:, :1])
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            space = math.exp(-(dy * dy + dx * dx) / (2 * sigma_space**2))
            rows = slice(radius + dy, radius + dy + height)
            cols = slice(radius + dx, radius + dx + width)
            diff = (gp[..., rows, cols] - g).square().sum(dim=1, keepdim=True)
            weight = space * torch.exp(-diff / (2 * sigma_range**2))
            num += weight * xp[..., rows, cols]
            den += weight
    return num / den


def fov_mask(
    images: Tensor, threshold: float = 0.04, close: int = 5, dark_border: float = 0.2
) -> Tensor:
    """Fundus aperture of (B, 3, H, W) uint8 or float images as a (B, 1, H, W) bool mask.

    A pixel is inside when its brightest channel rises ``threshold`` of the way from the border's
    level to the image's brightest value: the retina is bright at least in red, the border is dark
    in every channel but not always black. A contrast jitter blends the border with the image's
    mean (11/255 on a dim synthetic image, whose peak is 196) and JPEG borders sit at a few grey
    levels, so a threshold relative to 0 took the whole frame as aperture. The border's level is
    the median of the four corner patches; corners brighter than ``dark_border`` of the peak are
    retina (a frame-filling photograph), and the level is then 0. Relative levels work for uint8
    and [0, 1] images and for dim photographs alike; an all-black image has an empty aperture. A
    morphological closing with a ``close`` x ``close`` square (even sizes round up to odd; 0 or 1
    disables it) then fills small dark holes inside the aperture (dark haemorrhages, JPEG noise).
    """
    bright = images.to(torch.float32).amax(dim=1, keepdim=True)
    peak = bright.amax(dim=(2, 3), keepdim=True)
    border = _corner_level(bright)
    border = torch.where(border <= dark_border * peak, border, torch.zeros_like(border))
    inside = (bright > border + threshold * (peak - border)).to(torch.float32)
    if close > 1:
        inside = _closing(inside, close)
    return inside > 0.5


def _corner_level(bright: Tensor) -> Tensor:
    """Median brightness of the four corner patches (1/16 of each side), (B, 1, 1, 1)."""
    h, w = bright.shape[-2:]
    kh, kw = max(1, h // 16), max(1, w // 16)
    corners = [
        bright[..., rows, cols]
        for rows in (slice(0, kh), slice(h - kh, h))
        for cols in (slice(0, kw), slice(w - kw, w))
    ]
    flat = torch.cat([c.flatten(1) for c in corners], dim=1)
    return flat.median(dim=1).values.view(-1, 1, 1, 1)


def _closing(mask: Tensor, kernel: int) -> Tensor:
    """Dilate then erode with max pooling; the pooling padding is ignored (-inf), so the closing
    neither grows nor shrinks the mask at the image border."""
    pad = kernel // 2
    size = 2 * pad + 1
    dilated = F.max_pool2d(mask, size, stride=1, padding=pad)
    return -F.max_pool2d(-dilated, size, stride=1, padding=pad)


def pseudo_masks(
    attention: Tensor,
    size: int,
    quantile: float = 0.85,
    strict: bool = True,
    *,
    fov: Tensor | None = None,
    smoothing: Smoothing = "none",
    sigma: float = 2.0,
    sigma_range: float = 0.5,
    guide: Tensor | None = None,
) -> Tensor:
    """G2D pseudo masks (docs/objectives.md §4), (B, 1, size, size) float in {0, 1}, without
    gradient.

    Args:
        attention: (B, heads, h, w) attention of the pooled query over the grid tokens.
        size: The decoder's output side.
        quantile: q of the per-image threshold.
        strict: ``>`` (True) or ``>=`` (False) against the threshold.
        fov: Aperture, (B|1, 1, H, W) bool or float; outside is 0 before the quantile.
        smoothing: Optional clean-up of the binary mask before re-binarising at 0.5.
        sigma: Spatial sigma (pixels at ``size``) of the smoothing.
        sigma_range: Range sigma of the bilateral filter, in guide units (0.5 suits the
            self-guided {0, 1} mask; about 0.1 suits an image guide in [0, 1]).
        guide: Bilateral guide (B, G, H, W), e.g. the images (uint8 is scaled to [0, 1]); None
            guides the mask by itself.

    Upsampling is ``nearest-exact``: identical to ``nearest`` for the integer factors of a
    backbone's stride, and free of the half-cell shift ``nearest`` has otherwise.
    """
    with torch.no_grad():
        amap = attention.detach().to(torch.float32).mean(dim=1, keepdim=True)
        amap = F.interpolate(amap, size=(size, size), mode="nearest-exact")
        inside = None if fov is None else _fov_at(fov, size)
        if inside is not None:
            amap = amap * inside
        threshold = quantile_rows(amap.flatten(1), quantile).view(-1, 1, 1, 1)
        mask = amap > threshold if strict else amap >= threshold
        if inside is not None:
            mask = mask & inside
        if smoothing == "none":
            return mask.to(torch.float32)
        mask = _smooth(mask, smoothing, sigma, sigma_range, guide, size) > 0.5
        if inside is not None:
            mask = mask & inside
        return mask.to(torch.float32)


def _smooth(
    mask: Tensor,
    smoothing: Smoothing,
    sigma: float,
    sigma_range: float,
    guide: Tensor | None,
    size: int,
) -> Tensor:
    if smoothing == "gaussian":
        return gaussian_smooth(mask, sigma)
    if smoothing == "bilateral":
        if guide is not None:
            scale = 255.0 if guide.dtype == torch.uint8 else 1.0
            guide = _as_size(guide.to(torch.float32) / scale, size, "bilinear")
        return bilateral_smooth(mask, guide, sigma, sigma_range)
    raise ValueError(f"unknown smoothing {smoothing!r}; expected none, gaussian or bilateral")

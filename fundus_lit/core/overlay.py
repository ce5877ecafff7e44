"""Masks drawn over the images they belong to, as (N, 3, H, W) tensors for TensorBoard.

Pure tensor code on the device the images are on: objectives that log pictures (G2D's pseudo
masks) call it with what they computed, so drawing stays out of the objectives themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RED, GREEN, CYAN = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 1.0, 1.0)


def unit_images(images: Tensor) -> Tensor:
    """uint8 or [0, 1] images as floats in [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0, 1)


def outline(mask: Tensor, width: int = 1) -> Tensor:
    """The inner edge of a (N, 1, H, W) mask: pixels inside within ``width`` of the outside
    (the image border is not an edge, so an aperture cut by the frame is not outlined there)."""
    inside = (mask > 0.5).float()
    size = 2 * width + 1
    eroded = -F.max_pool2d(-inside, size, stride=1, padding=width)
    return (inside - eroded).clamp(0, 1)


def tint(x: Tensor, weight: Tensor, colour: tuple[float, float, float], alpha: float) -> Tensor:
    """``x`` blended towards ``colour`` by ``alpha * weight`` ((N, 1, H, W) in [0, 1])."""
    rgb = torch.tensor(colour, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    w = alpha * weight.to(x.dtype)
    return x * (1 - w) + w * rgb


def mask_overlay(images: Tensor, masks: Tensor, logits: Tensor, fov: Tensor | None) -> Tensor:
    """(N, 3, H, 3W) in [0, 1]: the image, its (pseudo) mask in red over it, the predicted mask
    in green over it, each panel with the field-of-view boundary in cyan.

    Args:
        images: (N, 3, H, W) uint8 or [0, 1].
        masks: (N, C, H, W) in [0, 1]; channels (heads) are averaged.
        logits: (N, C', H, W) predictions; their sigmoids are averaged over channels.
        fov: (N, 1, H, W) aperture mask, or None to draw no boundary.
    """
    x = unit_images(images)
    mask = masks.float().mean(dim=1, keepdim=True)
    pred = torch.sigmoid(logits.float()).mean(dim=1, keepdim=True)
    panels = [x, tint(x, mask, RED, 0.5), tint(x, pred, GREEN, 0.5)]
    if fov is not None:
        edge = outline(fov.float(), max(1, x.shape[-1] // 128))
        panels = [tint(p, edge, CYAN, 1.0) for p in panels]
    return torch.cat(panels, dim=-1).clamp(0, 1)

"""Image transforms: field-of-view crop, aspect-preserving square resize, train augmentations.

Images leave the pipeline as uint8 tensors; the vision tower normalises them on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2


@dataclass
class AugmentConfig:
    """Train-time augmentations (evaluation images are never augmented).

    Attributes:
        hflip: Probability of a horizontal flip (left/right eye mirror).
        degrees: Maximum rotation in degrees.
        translate: Maximum shift as a fraction of the image side.
        scale: Range of the random zoom.
        brightness: Brightness jitter strength.
        contrast: Contrast jitter strength.
    """

    hflip: float = 0.5
    degrees: float = 10.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.2
    contrast: float = 0.2


def fov_bbox(img: Image.Image, threshold: int = 15) -> tuple[int, int, int, int] | None:
    """Bounding box of the fundus aperture: pixels brighter than ``threshold`` on a thumbnail."""
    thumb = img.convert("L")
    thumb.thumbnail((256, 256))
    mask = np.asarray(thumb) > threshold
    if mask.sum() < 0.01 * mask.size:
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    sx, sy = img.width / thumb.width, img.height / thumb.height
    return (
        int(cols[0] * sx),
        int(rows[0] * sy),
        min(img.width, int(np.ceil((cols[-1] + 1) * sx))),
        min(img.height, int(np.ceil((rows[-1] + 1) * sy))),
    )


def fov_crop(img: Image.Image) -> Image.Image:
    """Crop the black border around the aperture, so the retina fills the frame."""
    box = fov_bbox(img)
    return img.crop(box) if box else img


def pad_resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the longer side to ``size`` and pad the shorter one with black, centred."""
    scale = size / max(img.width, img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    if (w, h) != img.size:
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    if w == h == size:
        return img
    canvas = Image.new("RGB", (size, size))
    canvas.paste(img, ((size - w) // 2, (size - h) // 2))
    return canvas


class ImagePipeline:
    """PIL image -> (3, size, size) uint8 tensor."""

    def __init__(self, size: int, crop_fov: bool = True, augment: AugmentConfig | None = None):
        self.size, self.crop_fov = size, crop_fov
        self.augment = None
        if augment is not None:
            self.augment = v2.Compose(
                [
                    v2.RandomHorizontalFlip(augment.hflip),
                    v2.RandomAffine(
                        degrees=augment.degrees,
                        translate=(augment.translate, augment.translate),
                        scale=augment.scale,
                    ),
                    v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast),
                ]
            )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.crop_fov:
            img = fov_crop(img)
        tensor = v2.functional.pil_to_tensor(pad_resize(img, self.size))
        return self.augment(tensor) if self.augment is not None else tensor

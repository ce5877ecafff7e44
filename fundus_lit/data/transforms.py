"""Image transforms: field-of-view crop, aspect-preserving square resize, train augmentations.

Images leave the pipeline as uint8 tensors; the vision tower normalises them on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


def flair_resize(img: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) floats in [0, 1], prepared as FLAIR's published code prepares images for
    its model: pixels / 255, the longer side resized to ``size`` (bilinear with antialiasing, on
    floats), zero padding on the right and bottom. Models imported from FLAIR or KeepFIT weights
    (``fundus-lit import``) were trained on this."""
    x = v2.functional.pil_to_tensor(img.convert("RGB")).float()
    if x.max() > 0:
        x = x / 255
    h, w = x.shape[-2:]
    scale = max(h, w) / size
    x = v2.functional.resize(x, [int(h / scale), int(w / scale)], antialias=True)
    return torch.nn.functional.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))


Resize = Literal["pad_center", "flair"]


class ImagePipeline:
    """PIL image -> (3, size, size) tensor: uint8 with ``resize="pad_center"`` (fundus-lit's own
    preparation), floats in [0, 1] with ``resize="flair"`` (:func:`flair_resize`)."""

    def __init__(
        self,
        size: int,
        crop_fov: bool = True,
        augment: AugmentConfig | None = None,
        resize: Resize = "pad_center",
    ):
        if resize not in ("pad_center", "flair"):
            raise ValueError(f"unknown image preparation {resize!r}; use pad_center or flair")
        self.size, self.crop_fov, self.resize = size, crop_fov, resize
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
        if self.resize == "flair":
            tensor = flair_resize(img, self.size)
        else:
            tensor = v2.functional.pil_to_tensor(pad_resize(img, self.size))
        return self.augment(tensor) if self.augment is not None else tensor

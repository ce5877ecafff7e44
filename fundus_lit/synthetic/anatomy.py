"""Healthy fundus anatomy, and the painting primitives lesions share with it.

The scene is composed in a *canonical* linear colour space (roughly the reflectance of a
well-lit posterior pole); only the camera step in :mod:`.generator` adds what a real fundus
camera does (illumination fall-off, colour balance, gamma, blur, noise, the black aperture).
Keeping the two apart is what lets one anatomy model look like several datasets.

Everything is drawn at the target size with vectorised numpy on small windows or with PIL
on supersampled coverage layers, because the generator has to keep up with a training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SS = 2  # supersampling of drawing layers: PIL rasterises without anti-aliasing
_CIRCLE = np.linspace(0.0, 2.0 * math.pi, 14, endpoint=False)


@lru_cache(maxsize=4)
def noise_bank(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth noise fields (3, 2s, 2s), their mix as choroidal texture (2s, 2s) and sensor
    grain (3, 2s, 2s), fixed per size.

    Each image crops a random window, which looks as random to a model as fresh noise but
    costs a slice instead of an upsampling per image; the fixed seed keeps it call-order free.
    """
    rng = np.random.default_rng(0xF0D5 + size)
    big = 2 * size
    fields = []
    for cells in (5, 18, 60):  # blotches, choroidal mottling, fine grain
        g = rng.standard_normal((min(cells, big), min(cells, big))).astype(np.float32)
        a = np.asarray(Image.fromarray(g).resize((big, big), Image.Resampling.BICUBIC))
        fields.append((a - a.mean()) / (a.std() + 1e-6))
    grain = rng.standard_normal((3, big, big)).astype(np.float32)
    texture = 0.55 * fields[0] + 0.35 * fields[1] + 0.25 * fields[2]
    return np.stack(fields), texture, grain


@dataclass
class Layout:
    """Where things are in one eye; lesion placement and the vessel tree both read it."""

    size: int
    ar: float
    nasal: int  # +1 when the nasal side is on the right of the image (right eye)
    disc: tuple[float, float, float, float]  # x, y, rx, ry in px
    dd: float  # disc diameter in px: the natural unit for sizes inside the eye
    fovea: tuple[float, float]
    veins: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def centre(self) -> float:
        return self.size / 2.0


def make_layout(size: int, eye: str, rng: np.random.Generator, aperture: float) -> Layout:
    """Disc on the nasal side, fovea ~2.5 disc diameters temporal and slightly lower.

    `aperture` is the aperture radius as a fraction of half the image width (a site property).
    """
    ar = size / 2.0 * aperture
    nasal = 1 if eye == "right" else -1
    dd = 2.0 * ar / rng.uniform(6.8, 8.2)
    x = size / 2.0 + nasal * ar * rng.uniform(0.27, 0.35)
    y = size / 2.0 + ar * rng.uniform(-0.06, 0.04)
    disc = (x, y, dd / 2 * rng.uniform(0.9, 1.0), dd / 2 * rng.uniform(1.0, 1.12))
    fovea = (x - nasal * dd * rng.uniform(2.3, 2.7), y + dd * rng.uniform(0.0, 0.35))
    return Layout(size, ar, nasal, disc, dd, fovea)


class Layer:
    """Supersampled 8-bit coverage; one per paint pass so overlaps do not double the tint."""

    def __init__(self, size: int) -> None:
        self.img = Image.new("L", (size * SS, size * SS))
        self.draw = ImageDraw.Draw(self.img)

    def ellipse(
        self, x: float, y: float, rx: float, ry: float, angle: float = 0.0, value: int = 255
    ) -> None:
        rx, ry = max(rx, 0.75), max(ry, 0.75)  # below this a shape vanishes at low sizes
        if angle == 0.0:
            self.draw.ellipse(
                (SS * (x - rx), SS * (y - ry), SS * (x + rx), SS * (y + ry)), fill=value
            )
            return
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = rx * np.cos(_CIRCLE), ry * np.sin(_CIRCLE)
        pts = np.stack([x + u * ca - v * sa, y + u * sa + v * ca], 1) * SS
        self.draw.polygon(pts.ravel().tolist(), fill=value)

    def line(self, pts: np.ndarray, width: float, value: int = 255) -> None:
        """Sub-pixel widths fade instead of thinning, which reads as anti-aliasing."""
        w = width * SS
        fill = value if w >= 1.0 else max(1, int(value * w))
        self.draw.line(
            (pts * SS).ravel().tolist(),
            fill=fill,
            width=max(1, round(w)),
            joint="curve" if w > 2 else None,
        )


class Canvas:
    """The canonical-colour image plus the optional lesion mask painted from the same layers.

    `rgb` is channel-first (3, s, s) float32: numpy broadcasts a per-channel colour over long
    rows ~20x faster than over a trailing axis of length 3.
    """

    def __init__(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> None:
        self.rgb = rgb
        self.mask = mask
        self.size = rgb.shape[1]

    def layer(self) -> Layer:
        return Layer(self.size)

    def apply(
        self,
        layer: Layer,
        colour: tuple[float, float, float],
        mode: str = "lerp",
        strength: float = 1.0,
        to_mask: bool = False,
        threshold: int = 64,
    ) -> None:
        """Tint only the bounding box of what was drawn, so small lesions cost little.

        Soft edges come from the supersampling and from painters drawing graded rings, not
        from blurring: a PIL blur costs more than the whole rest of a lesion pass. `threshold`
        is the coverage (0-255) from which a pixel counts as lesion in the mask.
        """
        box = layer.img.getbbox()
        if box is None:
            return
        full = self.size * SS
        x0, y0 = box[0] // SS * SS, box[1] // SS * SS
        x1, y1 = min(full, -(-box[2] // SS) * SS), min(full, -(-box[3] // SS) * SS)
        cover = np.asarray(layer.img.crop((x0, y0, x1, y1)).reduce(SS))
        a = cover * np.float32(strength / 255.0)
        sl = (slice(y0 // SS, y1 // SS), slice(x0 // SS, x1 // SS))
        region, col = self.rgb[(slice(None), *sl)], np.asarray(colour, dtype=np.float32)
        for c in range(3):
            if mode == "multiply":
                region[c] *= 1.0 - a * (1.0 - col[c])
            else:
                region[c] += a * (col[c] - region[c])
        if to_mask and self.mask is not None:
            self.mask[sl] |= cover >= threshold


def window(
    lay: Layout, x: float, y: float, half: float
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
    """Canvas slices (all channels) plus broadcastable offsets (1, w) and (h, 1) from (x, y),
    so local effects cost their area, not the image's."""
    s = lay.size
    x0, x1 = max(0, int(x - half)), min(s, int(x + half) + 2)
    y0, y1 = max(0, int(y - half)), min(s, int(y + half) + 2)
    dx = np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - x)
    dy = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - y)
    return (slice(None), slice(y0, y1), slice(x0, x1)), dx[None, :], dy[:, None]


def base_retina(lay: Layout, rng: np.random.Generator, pale: float = 0.0) -> np.ndarray:
    """Orange-red fundus reflectance with choroidal mottling; `pale` thins the pigment (myopia)."""
    s = lay.size
    _, texture, _ = noise_bank(s)
    oy, ox = (int(v) for v in rng.integers(0, s, 2))
    base = np.array(
        [rng.uniform(0.78, 0.92), rng.uniform(0.30, 0.42), rng.uniform(0.10, 0.19)],
        dtype=np.float32,
    )
    if pale:
        base = base * (1 - pale) + pale * np.array([0.95, 0.55, 0.30], dtype=np.float32)
    amp = np.array([0.05, 0.09, 0.11], dtype=np.float32) * np.float32(rng.uniform(0.6, 1.4))
    return (base * amp)[:, None, None] * texture[None, oy : oy + s, ox : ox + s] + base[
        :, None, None
    ]


def draw_macula(canvas: Canvas, lay: Layout, rng: np.random.Generator, reflex: bool) -> None:
    """Macular pigment darkens a broad area; the fovea is a smaller, darker pit."""
    fx, fy = lay.fovea
    sl, dx, dy = window(lay, fx, fy, 2.4 * lay.dd)
    r2 = dx * dx + dy * dy
    broad = 2 * (0.7 * lay.dd * rng.uniform(0.85, 1.15)) ** 2
    dark = rng.uniform(0.22, 0.36) * np.exp(-r2 / broad) + rng.uniform(0.10, 0.20) * np.exp(
        -r2 / (2 * (0.14 * lay.dd) ** 2)
    )
    canvas.rgb[sl] *= 1.0 - dark * np.array([0.75, 1.0, 0.9], dtype=np.float32)[:, None, None]
    if reflex:
        canvas.rgb[sl] += 0.3 * np.exp(-r2 / (2 * max(0.5, 0.03 * lay.dd) ** 2))


def draw_disc(
    canvas: Canvas, lay: Layout, rng: np.random.Generator, cdr: float, pallor: float = 0.0
) -> None:
    """Pink-orange neuroretinal rim around a pale cup set slightly temporally."""
    x, y, rx, ry = lay.disc
    sl, dx, dy = window(lay, x, y, 1.3 * max(rx, ry))
    cup_col = np.array([1.0, 0.92, 0.70], dtype=np.float32)[:, None, None]
    rim_col = np.array([1.0, 0.66, 0.38], dtype=np.float32)[:, None, None] * (1 - pallor) + (
        pallor * cup_col
    )
    edge = np.clip((1.0 - np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)) / 0.25 + 0.5, 0.0, 1.0)
    region = canvas.rgb[sl]
    region += (edge * rng.uniform(0.8, 0.95)) * (rim_col - region)
    shift = -lay.nasal * rx * rng.uniform(0.05, 0.2)
    crx, cry = cdr * rx, cdr * ry * rng.uniform(1.0, 1.1)
    rc = np.sqrt(((dx - shift) / crx) ** 2 + (dy / cry) ** 2)
    cup = np.clip((1.0 - rc) / 0.35 + 0.3, 0.0, 1.0) * rng.uniform(0.6, 0.85)
    region += cup * (cup_col - region)

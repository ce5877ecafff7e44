"""Index-addressed synthetic fundus photographs with known labels, findings and cameras.

Every choice for index ``i`` comes from ``default_rng([seed, i])`` (the cheap *plan*: site,
categories, quality, eye, findings) and ``default_rng([seed, i, 1])`` (the drawing), so a
sample never depends on which other samples were made before it, and a dataset of thousands
of records can be listed from plans alone without drawing a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from . import anatomy, lesions, vessels

CATEGORIES: tuple[str, ...] = (
    "normal",
    "mild non proliferative diabetic retinopathy",
    "moderate non proliferative diabetic retinopathy",
    "severe non proliferative diabetic retinopathy",
    "proliferative diabetic retinopathy",
    "glaucoma",
    "age related macular degeneration",
    "retinal vein occlusion",
    "pathologic myopia",
)
_NORMAL, _MILD, _MODERATE, _SEVERE, _PDR, _GLAUCOMA, _AMD, _RVO, _MYOPIA = CATEGORIES
# Glaucoma is also everyone's most common second condition, so it is drawn less as the first.
_WEIGHTS = np.array([1.6, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0])
_CUMULATIVE = np.cumsum(_WEIGHTS / _WEIGHTS.sum())
# Pairs that plausibly co-occur and whose signs do not overlap, so findings stay unique;
# never two DR grades, never normal with anything.
_PARTNERS: dict[str, tuple[str, ...]] = {
    _MILD: (_GLAUCOMA, _AMD),
    _MODERATE: (_GLAUCOMA, _AMD),
    _SEVERE: (_GLAUCOMA,),
    _PDR: (_GLAUCOMA,),
    _GLAUCOMA: (_MILD, _MODERATE, _SEVERE, _PDR, _AMD, _RVO, _MYOPIA),
    _AMD: (_GLAUCOMA, _MILD, _MODERATE),
    _RVO: (_GLAUCOMA,),
    _MYOPIA: (_GLAUCOMA,),
}


@dataclass(frozen=True)
class Camera:
    """Optics shared by every image of one site: the domain shift a model must see through."""

    name: str
    gains: tuple[float, float, float]
    gamma: float
    vignette: float
    aperture: float  # aperture radius as a fraction of half the image width
    clip: float  # half-height of the flat top/bottom cut, in aperture radii (>= 1: round)
    blur: float  # optical softness in px at 256 px


# gains, gamma, vignette, aperture, clip, blur: hand-tuned for the first sites
_OPTICS = (
    ((1.00, 1.00, 1.00), 1.00, 0.45, 0.94, 1.00, 0.6),
    ((1.08, 0.86, 0.80), 0.85, 0.60, 0.98, 0.86, 0.9),
    ((0.95, 1.04, 1.10), 1.10, 0.35, 0.88, 1.00, 0.4),
    ((0.86, 0.82, 0.88), 1.20, 0.55, 0.95, 0.90, 0.7),
)


def site_name(k: int) -> str:
    """synth_a ... synth_z, synth_aa, ...: a stable dataset name per site index."""
    letters, k = "", k + 1
    while k:
        k, r = divmod(k - 1, 26)
        letters = chr(ord("a") + r) + letters
    return f"synth_{letters}"


def camera(k: int) -> Camera:
    """Site k's optics; beyond the hand-tuned ones, random but fixed per k (not per seed)."""
    if k < len(_OPTICS):
        gains, gamma, vig, ap, clip, blur = _OPTICS[k]
    else:
        r = np.random.default_rng([k, 99])
        gains = tuple(float(g) for g in r.uniform(0.88, 1.12, 3))
        gamma, vig, ap = r.uniform(0.85, 1.2), r.uniform(0.3, 0.6), r.uniform(0.86, 0.98)
        clip, blur = (r.uniform(0.84, 0.95) if r.random() < 0.5 else 1.0), r.uniform(0.3, 1.0)
    return Camera(
        site_name(k), gains, float(gamma), float(vig), float(ap), float(clip), float(blur)
    )


@lru_cache(maxsize=32)
def _aperture(size: int, ar: float, clip: float) -> tuple[np.ndarray, ...]:
    """Soft-edged aperture, vignetting shape and normalised axes, shared by a site's images."""
    c = np.arange(size, dtype=np.float32) + np.float32(0.5 - size / 2.0)
    dx, dy = (c / np.float32(ar))[None, :], (c / np.float32(ar))[:, None]
    r2 = dx * dx + dy * dy
    soft = max(1.0, 0.012 * size) / ar
    alpha = np.clip((1.0 - np.sqrt(r2)) / soft + 0.5, 0.0, 1.0)
    if clip < 1.0:
        alpha *= np.clip((clip - np.abs(dy)) / soft + 0.5, 0.0, 1.0)
    return alpha, r2 * (0.35 + 0.65 * r2), dx, dy


def _soften(rgb: np.ndarray, sigma: float) -> None:
    """In-place separable 3-tap blur (variance 2w per axis): optical softness at a fraction of
    a PIL GaussianBlur's cost, and exact enough for sigma < ~0.8 px."""
    w = np.float32(min(1.0 / 3.0, sigma * sigma / 2.0))
    for axis in (1, 2):
        src = rgb.copy()
        rgb *= 1 - 2 * w
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(1, None), slice(None, -1)
        rgb[tuple(lo)] += w * src[tuple(hi)]
        rgb[tuple(hi)] += w * src[tuple(lo)]


def photograph(
    rgb: np.ndarray, lay: anatomy.Layout, rng: np.random.Generator, cam: Camera, noisy: bool
) -> np.ndarray:
    """Render the (3, s, s) canonical scene to (s, s, 3) uint8 as `cam` would.

    'noisy' images get two of: defocus, grain, bad exposure, haze (the image-quality label).
    """
    s, scale = lay.size, lay.size / 256.0
    alpha, shape, dx, dy = _aperture(s, lay.ar, cam.clip)
    grain = anatomy.noise_bank(s)[2]
    defects = set(rng.choice(4, 2, replace=False).tolist()) if noisy else set()
    phi, tilt, expo = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.1)
    if 2 in defects:
        tilt = rng.uniform(0.35, 0.7)
        expo = rng.uniform(0.4, 0.65) if rng.random() < 0.6 else rng.uniform(1.5, 2.0)
    illum = (
        1.0
        - cam.vignette * rng.uniform(0.8, 1.25) * shape
        + tilt * (math.cos(phi) * dx + math.sin(phi) * dy)
    )
    oy, ox = (int(v) for v in rng.integers(0, s, 2))
    rgb += 0.01 * grain[:, oy : oy + s, ox : ox + s]
    _soften(rgb, cam.blur * scale * rng.uniform(0.7, 1.3))
    if 3 in defects:  # cataract-like veil
        h = np.float32(rng.uniform(0.25, 0.5))
        rgb *= 1 - h
        rgb += h * np.array([0.8, 0.62, 0.45], dtype=np.float32)[:, None, None]
    rgb *= np.maximum(illum, 0.05) * alpha * np.float32(expo)
    rgb *= (np.asarray(cam.gains) * rng.uniform(0.92, 1.08, 3) * 255).astype(np.float32)[
        :, None, None
    ]
    u8 = np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)
    img = Image.merge("RGB", [Image.fromarray(c) for c in u8])
    gamma = cam.gamma * rng.uniform(0.9, 1.1)
    img = img.point((255 * (np.arange(256) / 255) ** (1 / gamma)).round().astype(int).tolist() * 3)
    if 0 in defects:  # defocus: a box-down / bicubic-up round trip is a cheap wide blur
        k = max(2, round(rng.uniform(2.5, 5.0) * scale))
        img = img.reduce(k).resize((s, s), Image.Resampling.BICUBIC)
    out = np.array(img)
    if 1 in defects:  # mostly luminance grain, as from a high-gain sensor
        oy, ox = (int(v) for v in rng.integers(0, s, 2))
        g = grain[:, oy : oy + s, ox : ox + s]
        noise = (0.7 * g[:1] + 0.3 * g) * (rng.uniform(6, 14) * alpha)
        out = np.clip(out + noise.transpose(1, 2, 0), 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True)
class Finding:
    """One kind of sign actually drawn; reports and captions (with negations) come from it."""

    kind: str
    region: str
    count: int


@dataclass
class SynthSample:
    index: int
    image: np.ndarray  # (size, size, 3) uint8 RGB
    categories: list[str]
    attributes: list[str]
    findings: list[Finding]
    eye: str
    site: str
    lesion_mask: np.ndarray | None = None


@dataclass(frozen=True)
class Plan:
    site: int
    categories: list[str]
    attributes: list[str]
    eye: str
    findings: list[Finding]


_QUADS = ("superotemporal", "inferotemporal", "superonasal", "inferonasal")
_ARCADES = ("along the superior arcade", "along the inferior arcade")
_EXUDATE_AT = ("macula", "macula", "macula", *_QUADS[:2])  # mostly round the macula
_CWS_AT = ("peripapillary", "diffuse", *_ARCADES)
# category -> signs as (kind, regions to pick from, count range, probability of being present);
# DR grades are cumulative, as in the grading scales.
_SIGNS: dict[str, tuple[tuple[str, tuple[str, ...], tuple[int, int], float], ...]] = {
    _MILD: (("microaneurysm", ("diffuse", "macula", *_QUADS[:2]), (2, 7), 1.0),),
    _MODERATE: (
        ("microaneurysm", ("diffuse",), (4, 12), 1.0),
        ("haemorrhage", ("diffuse", *_QUADS), (2, 7), 1.0),
        ("hard_exudate", _EXUDATE_AT, (3, 14), 1.0),
        ("cotton_wool_spot", _CWS_AT, (1, 3), 0.4),
    ),
    _SEVERE: (
        ("microaneurysm", ("diffuse",), (8, 20), 1.0),
        ("haemorrhage", ("diffuse",), (10, 22), 1.0),
        ("hard_exudate", _EXUDATE_AT, (6, 22), 1.0),
        ("cotton_wool_spot", _CWS_AT, (2, 5), 1.0),
    ),
    _PDR: (
        ("microaneurysm", ("diffuse",), (6, 18), 1.0),
        ("haemorrhage", ("diffuse",), (6, 20), 1.0),
        ("hard_exudate", _EXUDATE_AT, (4, 20), 1.0),
        ("cotton_wool_spot", _CWS_AT, (1, 4), 0.7),
        ("new_vessels", ("optic disc", *_ARCADES), (1, 2), 1.0),
    ),
    _GLAUCOMA: (("enlarged_cup", ("optic disc",), (1, 1), 1.0),),
    _AMD: (("drusen", ("macula",), (6, 40), 1.0),),
    _RVO: (("flame_haemorrhage", _QUADS[:2], (8, 22), 1.0),),
    _MYOPIA: (
        ("tessellation", ("diffuse",), (1, 1), 1.0),
        ("peripapillary_atrophy", ("peripapillary",), (1, 1), 1.0),
    ),
}


def _findings(cat: str, rng: np.random.Generator) -> list[Finding]:
    out = []
    for kind, regions, (lo, hi), p in _SIGNS.get(cat, ()):
        u, r, k = rng.random(3).tolist()  # always drawn, so streams do not depend on outcomes
        if u < p:
            out.append(Finding(kind, regions[int(r * len(regions))], lo + int(k * (hi - lo + 1))))
    return out


class FundusSynth:
    """Infinite, index-addressed generator of labelled colour fundus photographs."""

    def __init__(
        self,
        seed: int = 0,
        size: int = 256,
        sites: int = 2,
        p_two_conditions: float = 0.2,
        p_noisy: float = 0.2,
    ) -> None:
        if sites < 1 or size < 16:
            raise ValueError(f"need sites >= 1 and size >= 16, got {sites=} {size=}")
        self.seed, self.size, self.sites = seed, size, sites
        self.p_two_conditions, self.p_noisy = p_two_conditions, p_noisy
        self.cameras = [camera(k) for k in range(sites)]

    def _plan(self, index: int) -> Plan:
        """All label-level choices; the uniforms are always drawn so that changing one
        probability does not reshuffle the other choices of the same index."""
        rng = np.random.default_rng([self.seed, index])
        site = int(rng.integers(self.sites))
        primary = CATEGORIES[int(np.searchsorted(_CUMULATIVE, rng.random(), side="right"))]
        u_two, u_pick, u_noisy, u_eye = rng.random(4)
        cats = [primary]
        partners = _PARTNERS.get(primary, ())
        if partners and u_two < self.p_two_conditions:
            cats.append(partners[int(u_pick * len(partners))])
        findings = [f for c in cats for f in _findings(c, rng)]
        attributes = ["noisy" if u_noisy < self.p_noisy else "clean"]
        return Plan(site, cats, attributes, "right" if u_eye < 0.5 else "left", findings)

    def site_of(self, index: int) -> str:
        return self.cameras[self._plan(index).site].name

    def categories_of(self, index: int) -> list[str]:
        return list(self._plan(index).categories)

    def attributes_of(self, index: int) -> list[str]:
        return list(self._plan(index).attributes)

    def labels_of(self, index: int) -> tuple[str, list[str], list[str]]:
        """(site, categories, attributes) from one plan: what a record needs, without drawing."""
        plan = self._plan(index)
        return self.cameras[plan.site].name, list(plan.categories), list(plan.attributes)

    def sample(self, index: int, with_mask: bool = False) -> SynthSample:
        """Deterministic in (seed, index) alone; the mask costs nothing extra to paint."""
        plan = self._plan(index)
        rng = np.random.default_rng([self.seed, index, 1])
        cam, noisy = self.cameras[plan.site], plan.attributes == ["noisy"]
        lay = anatomy.make_layout(self.size, plan.eye, rng, cam.aperture)
        kinds = {f.kind: f for f in plan.findings}
        mask = np.zeros((self.size, self.size), dtype=bool) if with_mask else None
        myopic = "tessellation" in kinds
        canvas = anatomy.Canvas(anatomy.base_retina(lay, rng, 0.3 if myopic else 0.0), mask)
        if myopic:
            lesions.tessellation(canvas, rng, lay, rng.uniform(0.6, 1.0))
        anatomy.draw_macula(canvas, lay, rng, reflex=not noisy and rng.random() < 0.7)
        if "peripapillary_atrophy" in kinds:
            lesions.peripapillary_atrophy(canvas, rng, lay, rng.uniform(0.3, 0.8))
        glaucoma = "enlarged_cup" in kinds
        cdr = rng.uniform(0.65, 0.85) if glaucoma else rng.uniform(0.3, 0.45)
        anatomy.draw_disc(canvas, lay, rng, cdr, rng.uniform(0.1, 0.35) if glaucoma else 0.0)
        rvo = kinds.get("flame_haemorrhage")
        vessels.draw_vessels(canvas, vessels.build_vessels(lay, rng, rvo.region if rvo else None))
        for f in plan.findings:
            lesions.paint(canvas, rng, lay, f.kind, f.region, f.count)
        image = photograph(canvas.rgb, lay, rng, cam, noisy)
        # plans are built fresh per call, so their lists can be handed out without copying
        return SynthSample(
            index, image, plan.categories, plan.attributes, plan.findings, plan.eye, cam.name, mask
        )

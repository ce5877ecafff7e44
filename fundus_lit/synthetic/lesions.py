"""Lesion painters, one per finding kind.

Every painter draws into a coverage :class:`~.anatomy.Layer` and hands it to
:meth:`~.anatomy.Canvas.apply`, so the pixels that get tinted are exactly the pixels that go
into the lesion mask: segmentation targets can never drift from what the image shows.
Sizes are in disc diameters (``lay.dd``) so lesions scale with the image.
"""

from __future__ import annotations

import math

import numpy as np

from .anatomy import Canvas, Layout, noise_bank, window

# multiply factors (dark lesions) or lerp targets (bright lesions), in canonical colour
HAEM = (0.52, 0.20, 0.18)
MICROANEURYSM = (0.50, 0.18, 0.16)
EXUDATE = (1.0, 0.92, 0.42)
COTTON_WOOL = (0.97, 0.94, 0.86)
DRUSEN = (0.98, 0.82, 0.45)
NEW_VESSEL = (0.55, 0.25, 0.30)
ATROPHY = (0.97, 0.86, 0.66)


def _candidates(rng: np.random.Generator, lay: Layout, region: str, m: int) -> np.ndarray:
    """Raw (m, 2) proposals for a region; `place` filters them."""
    dd, (x, y, _, _), (fx, fy) = lay.dd, lay.disc, lay.fovea
    ang = rng.uniform(0.0, 2 * math.pi, m)
    if region == "macula":
        cx, cy, r = fx, fy, 1.6 * dd * np.sqrt(rng.random(m))
    elif region == "optic disc":
        cx, cy, r = x, y, 0.5 * dd * np.sqrt(rng.random(m))
    elif region == "peripapillary":
        cx, cy, r = x, y, rng.uniform(0.6, 1.4, m) * dd
    elif region.startswith("along the"):
        vein = lay.veins["superotemporal" if "superior" in region else "inferotemporal"]
        p = vein[rng.integers(len(vein) // 6, len(vein), m)]
        return p + rng.normal(0.0, 0.35 * dd, (m, 2))
    else:  # quadrants around the disc-fovea midpoint, or anywhere in the posterior pole
        cx, cy = (x + fx) / 2, (y + fy) / 2
        r = lay.ar * rng.uniform(0.2, 0.85, m)
        if region != "diffuse":
            hx = lay.nasal if "nasal" in region else -lay.nasal
            hy = -1.0 if region.startswith("super") else 1.0
            ang = math.atan2(hy, hx) + rng.uniform(-0.7, 0.7, m)
        else:
            r = lay.ar * 0.85 * np.sqrt(rng.random(m))
    return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)


def place(
    rng: np.random.Generator,
    lay: Layout,
    region: str,
    n: int,
    clusters: int = 0,
    spread: float = 0.3,
) -> np.ndarray:
    """n lesion centres in `region`, inside the aperture and off the disc.

    With `clusters`, points gather round a few seeds, as exudates and drusen do in reality.
    """
    got: list[np.ndarray] = []
    have = 0
    for _ in range(20):
        if clusters:
            seeds = _candidates(rng, lay, region, clusters)
            pick = seeds[rng.integers(0, clusters, 3 * n)]
            cand = pick + rng.normal(0.0, spread * lay.dd, (3 * n, 2))
        else:
            cand = _candidates(rng, lay, region, 3 * n)
        x, y, _, _ = lay.disc
        ok = ((cand - lay.centre) ** 2).sum(1) < (0.9 * lay.ar) ** 2
        if region != "optic disc":
            ok &= ((cand[:, 0] - x) ** 2 + (cand[:, 1] - y) ** 2) > (0.6 * lay.dd) ** 2
        got.append(cand[ok])
        have += int(ok.sum())
        if have >= n:
            break
    pts = np.concatenate(got)[:n]
    if len(pts) < n:  # pathological geometry only: fall back to the macula, always inside
        pts = np.concatenate([pts, place(rng, lay, "macula", n - len(pts))])
    return pts


def microaneurysms(canvas: Canvas, rng: np.random.Generator, lay: Layout, pts: np.ndarray) -> None:
    """Tiny, sharp, dark-red dots: the earliest DR sign."""
    layer = canvas.layer()
    for (x, y), r in zip(pts.tolist(), (lay.dd * rng.uniform(0.025, 0.045, len(pts))).tolist()):
        layer.ellipse(x, y, r, r)
    canvas.apply(layer, MICROANEURYSM, "multiply", 0.9, to_mask=True)


def haemorrhages(canvas: Canvas, rng: np.random.Generator, lay: Layout, pts: np.ndarray) -> None:
    """Dot/blot haemorrhages: overlapping ellipses give the irregular blot outline, a faint
    halo the soft edge."""
    layer = canvas.layer()
    for x, y in pts.tolist():
        r = lay.dd * rng.uniform(0.04, 0.09)
        blobs = [
            (*rng.normal(0.0, 0.4 * r, 2), *(r * rng.uniform(0.6, 1.0, 2)))
            for _ in range(int(rng.integers(1, 4)))
        ]
        for value, grow in ((110, 1.25), (255, 1.0)):
            for ox, oy, rx, ry in blobs:
                layer.ellipse(x + ox, y + oy, rx * grow, ry * grow, value=value)
    canvas.apply(layer, HAEM, "multiply", rng.uniform(0.75, 0.95), to_mask=True, threshold=128)


def hard_exudates(canvas: Canvas, rng: np.random.Generator, lay: Layout, pts: np.ndarray) -> None:
    """Small, sharp-edged, waxy yellow deposits."""
    layer = canvas.layer()
    for x, y in pts.tolist():
        r = lay.dd * rng.uniform(0.02, 0.05)
        layer.ellipse(x, y, r * rng.uniform(0.7, 1.3), r, rng.uniform(0.0, 3.1))
    canvas.apply(layer, EXUDATE, "lerp", rng.uniform(0.75, 0.95), to_mask=True)


def cotton_wool_spots(
    canvas: Canvas, rng: np.random.Generator, lay: Layout, pts: np.ndarray
) -> None:
    """Fluffy white patches: graded rings feather their edges into the retina."""
    layer = canvas.layer()
    for x, y in pts.tolist():
        r, ratio, ang = lay.dd * rng.uniform(0.08, 0.13), rng.uniform(0.55, 0.9), rng.uniform(0, 3)
        for value, grow in ((60, 1.3), (130, 1.0), (200, 0.75), (255, 0.5)):
            layer.ellipse(x, y, r * grow, r * ratio * grow, ang, value=value)
    canvas.apply(layer, COTTON_WOOL, "lerp", rng.uniform(0.6, 0.8), to_mask=True, threshold=128)


def drusen(canvas: Canvas, rng: np.random.Generator, lay: Layout, pts: np.ndarray) -> None:
    """Round, soft-edged yellowish deposits of varying size around the macula (AMD)."""
    layer = canvas.layer()
    for x, y in pts.tolist():
        r = lay.dd * rng.uniform(0.025, 0.07)
        layer.ellipse(x, y, r * 1.3, r * 1.3, value=120)
        layer.ellipse(x, y, r, r)
    canvas.apply(layer, DRUSEN, "lerp", rng.uniform(0.55, 0.8), to_mask=True, threshold=100)


def flame_haemorrhages(
    canvas: Canvas, rng: np.random.Generator, lay: Layout, vein: np.ndarray, n: int
) -> None:
    """Streaks along the nerve fibres beside one vein, downstream of the occlusion (RVO)."""
    layer, m = canvas.layer(), len(vein)
    i0 = int(m * rng.uniform(0.12, 0.3))
    i1 = min(m - 1, i0 + max(2, int(m * rng.uniform(0.35, 0.6))))
    for i in rng.integers(i0, max(i0 + 1, i1), n).tolist():
        t = vein[min(i + 1, m - 1)] - vein[max(i - 1, 0)]
        t = t / (np.hypot(*t) + 1e-6)
        off = rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.5) * lay.dd
        x, y = vein[i] + off * np.array([-t[1], t[0]])
        ang = math.atan2(t[1], t[0]) + rng.normal(0.0, 0.25)
        length, width = lay.dd * rng.uniform(0.12, 0.24), lay.dd * rng.uniform(0.04, 0.07)
        layer.ellipse(x, y, length, width, ang)
        tail = 0.6 * length  # a thinner feathered tail makes the flame shape
        layer.ellipse(
            x + tail * math.cos(ang),
            y + tail * math.sin(ang),
            length * 0.6,
            width * 0.6,
            ang + rng.normal(0.0, 0.2),
        )
    canvas.apply(layer, HAEM, "multiply", rng.uniform(0.75, 0.9), to_mask=True)


def new_vessels(canvas: Canvas, rng: np.random.Generator, lay: Layout, centre: np.ndarray) -> None:
    """A tangle of thin, looping vessels: curling walks with strong constant curvature."""
    layer, radius = canvas.layer(), lay.dd * rng.uniform(0.3, 0.55)
    for _ in range(int(rng.integers(8, 16))):
        n = int(rng.integers(10, 24))
        h = rng.uniform(0, 2 * math.pi) + np.cumsum(
            rng.choice([-1, 1]) * rng.uniform(0.3, 0.7) + rng.normal(0, 0.35, n)
        )
        step = radius * 0.1
        start = centre + rng.normal(0.0, 0.3 * radius, 2)
        pts = start + np.cumsum(step * np.stack([np.cos(h), np.sin(h)], 1), 0)
        layer.line(pts, max(0.5, lay.dd * rng.uniform(0.015, 0.03)))
    canvas.apply(layer, NEW_VESSEL, "multiply", 0.7, to_mask=True)


def tessellation(canvas: Canvas, rng: np.random.Generator, lay: Layout, strength: float) -> None:
    """Myopic thinning exposes choroidal vessels: curvy stripes radiating from the disc."""
    s, (x, y, _, _) = lay.size, lay.disc
    sl, dx, dy = window(lay, x, y, 2.0 * s)
    smooth, _, _ = noise_bank(s)
    oy, ox = (int(v) for v in rng.integers(0, s, 2))
    warp = smooth[:, oy : oy + s, ox : ox + s]
    r = np.log1p(np.sqrt(dx * dx + dy * dy) / lay.dd)
    phase = (
        int(rng.integers(34, 50)) * np.arctan2(dy, dx)
        + 1.2 * warp[1]
        + 0.4 * warp[2]
        + rng.uniform(-2.0, 2.0) * r
    )
    fade = np.clip(0.6 + 0.4 * warp[0], 0.1, 1.0) * np.clip(r - 0.3, 0.0, 1.0)
    dark = np.clip(1.5 * np.sin(phase) - 0.4, 0.0, 1.0) * fade
    dark *= np.float32(strength)
    canvas.rgb[sl] *= 1.0 - dark * np.array([0.3, 0.4, 0.25], dtype=np.float32)[:, None, None]


def peripapillary_atrophy(
    canvas: Canvas, rng: np.random.Generator, lay: Layout, extent: float
) -> None:
    """Pale temporal crescent: an ellipse shifted temporally leaves only that side visible
    once the disc is painted over it (paint this before the disc)."""
    x, y, rx, ry = lay.disc
    shift, orx, ory = (
        -lay.nasal * rx * 0.55 * extent,
        rx * (1 + 0.5 * extent),
        ry * (1 + 0.25 * extent),
    )
    sl, dx, dy = window(lay, x + shift, y, 1.3 * max(orx, ory))
    rn = np.sqrt((dx / orx) ** 2 + (dy / ory) ** 2)
    a = np.clip((1.0 - rn) / 0.12 + 0.5, 0.0, 1.0) * np.float32(rng.uniform(0.7, 0.9))
    ring = np.exp(-(((rn - 1.0) / 0.08) ** 2)) * np.float32(rng.uniform(0.1, 0.35))
    region = canvas.rgb[sl]
    region += a * (np.asarray(ATROPHY, dtype=np.float32)[:, None, None] - region)
    region *= 1.0 - ring


def paint(
    canvas: Canvas, rng: np.random.Generator, lay: Layout, kind: str, region: str, count: int
) -> None:
    """Dispatch a point-lesion finding; area findings are painted with the anatomy instead."""
    if kind == "flame_haemorrhage":
        flame_haemorrhages(canvas, rng, lay, lay.veins[region], count)
    elif kind == "new_vessels":
        for centre in place(rng, lay, region, count):
            new_vessels(canvas, rng, lay, centre)
    elif kind in _POINT:
        painter, clusters = _POINT[kind]
        pts = place(rng, lay, region, count, clusters=clusters(rng) if clusters else 0)
        painter(canvas, rng, lay, pts)


_POINT = {
    "microaneurysm": (microaneurysms, None),
    "haemorrhage": (haemorrhages, None),
    "hard_exudate": (hard_exudates, lambda rng: int(rng.integers(1, 4))),
    "cotton_wool_spot": (cotton_wool_spots, None),
    "drusen": (drusen, lambda rng: int(rng.integers(2, 6))),
}

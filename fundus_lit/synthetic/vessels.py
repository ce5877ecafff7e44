"""The retinal vessel tree: arcades from the disc, branching towards the periphery, drawn as
tapering polylines (veins dark and wide, arteries lighter).

The tree is grown in disc diameters from the eye's :class:`~.anatomy.Layout`, so vessels scale
with the image and follow the disc's side; an occluded arcade (retinal vein occlusion) gets a
wider, tortuous vein.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .anatomy import SS, Canvas, Layout


@dataclass
class Vessel:
    """A polyline whose width tapers linearly from w0 to w1 (px)."""

    pts: np.ndarray  # (n, 2) px
    w0: float
    w1: float
    vein: bool

    def width(self, i: float) -> float:
        return self.w0 + (self.w1 - self.w0) * i / max(1, len(self.pts) - 1)


STEP = 0.2  # vessel polyline step in disc diameters: coarse, since PIL cost is per segment


class _Tree:
    """Grows the vessel tree of one eye into `out`; a class only to share lay/rng/out."""

    def __init__(self, lay: Layout, rng: np.random.Generator) -> None:
        self.lay, self.rng = lay, rng
        self.out: list[Vessel] = []

    def grow(
        self, x: float, y: float, h: float, w: float, length: float, vein: bool, depth: int
    ) -> None:
        """A wandering, tapering branch that stops at the aperture or the foveal avascular zone.

        A plain Python walk: branches are short, so numpy call overhead would dominate.
        """
        lay = self.lay
        if w < max(0.45, 0.02 * lay.dd) or length < 0.3 * lay.dd:
            return
        step, c, (fx, fy) = STEP * lay.dd, lay.centre, lay.fovea
        lim2, faz2 = (1.02 * lay.ar) ** 2, (0.3 * lay.dd) ** 2
        noise = self.rng.normal(0.0, 0.12, max(3, int(length / step)) + 1).tolist()
        bias, curv = 0.25 * noise.pop(), 0.0
        pts, heads = [(x, y)], [h]
        for e in noise:
            curv = 0.6 * curv + e
            h += 0.5 * curv + bias
            x, y = x + step * math.cos(h), y + step * math.sin(h)
            if (x - c) ** 2 + (y - c) ** 2 > lim2 or (x - fx) ** 2 + (y - fy) ** 2 < faz2:
                break
            pts.append((x, y))
            heads.append(h)
        if len(pts) >= 3:
            v = Vessel(np.array(pts), w, 0.6 * w, vein)
            self.out.append(v)
            self.branch(v, heads, None, depth, length * 0.55)

    def branch(
        self,
        parent: Vessel,
        heads: list[float],
        centre: tuple[float, float] | None,
        depth: int,
        length: float,
    ) -> None:
        """Side branches every ~1 DD; off an arcade they prefer the side away from the macula."""
        n = len(parent.pts)
        if depth <= 0 or n < 4:
            return
        every = max(2, int(self.rng.uniform(0.9, 1.4) / STEP))
        at = list(range(int(self.rng.integers(1, every + 1)), n - 1, every))
        for i, (u_turn, u_side, u_in, u_scale, u_len) in zip(
            at, self.rng.random((len(at), 5)).tolist()
        ):
            turn, h = 0.45 + 0.65 * u_turn, heads[i]
            side, inner = (1.0 if u_side < 0.5 else -1.0), False
            if centre is not None:  # outer side points away from the arcade's centre
                ox, oy = parent.pts[i, 0] - centre[0], parent.pts[i, 1] - centre[1]
                side = 1.0 if math.cos(h + turn) * ox + math.sin(h + turn) * oy > 0 else -1.0
                inner = u_in < 0.35
                side = -side if inner else side
            w = parent.width(i) * ((0.35 + 0.15 * u_scale) if inner else (0.5 + 0.28 * u_scale))
            sub = length * (0.45 if inner else 1.0) * (0.6 + 0.6 * u_len)
            x, y = parent.pts[i]
            self.grow(x, y, h + side * turn, w, sub, parent.vein, depth - 1)


def build_vessels(lay: Layout, rng: np.random.Generator, dilate: str | None = None) -> list[Vessel]:
    """Two temporal arcades curving round the macula, nasal branches and small macular twigs.

    `dilate` names the arcade whose vein is occluded downstream (RVO): wider and tortuous.
    """
    tree = _Tree(lay, rng)
    x, y, _, _ = lay.disc
    fx, _ = lay.fovea
    w_vein = 0.095 * lay.dd * rng.uniform(0.9, 1.1)
    for sup, name in ((-1, "superotemporal"), (1, "inferotemporal")):
        for vein in (True, False):
            sx = x + lay.nasal * lay.dd * rng.uniform(-0.12, 0.12)
            a = abs(sx - fx) * rng.uniform(1.05, 1.25)
            b = lay.dd * rng.uniform(1.8, 2.3) * (1.06 if vein else 0.96)
            ex, t_end = sx - lay.nasal * a, rng.uniform(2.4, 2.9)
            w0 = w_vein * (1.0 if vein else rng.uniform(0.68, 0.8))
            fine = 3 if vein and dilate == name else 1  # tortuous: sample finer for the kinks
            t = np.linspace(0.0, t_end, fine * max(8, int((a + b) / 2 * t_end / (STEP * lay.dd))))
            wob = 1.0 + 0.04 * np.sin(t * rng.uniform(3, 6) + rng.uniform(0, 6.3))
            if fine > 1:
                wob += 0.012 * np.sin(t * rng.uniform(22, 30))
                w0 *= rng.uniform(1.3, 1.5)
            pts = np.stack([ex + lay.nasal * a * np.cos(t) * wob, y + sup * b * np.sin(t) * wob], 1)
            inside = ((pts - lay.centre) ** 2).sum(1) < (1.02 * lay.ar) ** 2
            pts = pts[: int(np.argmin(inside)) if not inside.all() else len(pts)]
            v = Vessel(pts, w0, w0 * (1.0 - 0.55 * len(pts) / len(t)), vein)
            tree.out.append(v)
            if vein:
                lay.veins[name] = pts
            heads = np.arctan2(np.gradient(pts[::fine, 1]), np.gradient(pts[::fine, 0])).tolist()
            tree.branch(Vessel(pts[::fine], v.w0, v.w1, vein), heads, (ex, y), 2, 2.2 * lay.dd)
            h = math.atan2(sup * rng.uniform(0.5, 1.4), lay.nasal)  # nasal branch
            tree.grow(sx, y, h, w0 * rng.uniform(0.6, 0.8), lay.dd * rng.uniform(2.6, 3.6), vein, 2)
    for _ in range(int(rng.integers(1, 4))):  # thin twigs towards the macula and nasally
        toward = -lay.nasal if rng.random() < 0.65 else lay.nasal
        x0, y0 = x + toward * 0.3 * lay.dd, y + rng.uniform(-0.3, 0.3) * lay.dd
        h = math.atan2(rng.uniform(-0.35, 0.35), toward)
        length = lay.dd * rng.uniform(1.2, 2.0)
        tree.grow(x0, y0, h, w_vein * 0.35, length, bool(rng.random() < 0.5), 1)
    return tree.out


def draw_vessels(canvas: Canvas, vessels: list[Vessel]) -> None:
    """Veins dark and wide, arteries lighter; tapering drawn as a few constant-width pieces."""
    for vein, col, strength in (
        (True, (0.58, 0.28, 0.38), 0.92),
        (False, (0.84, 0.55, 0.62), 0.85),
    ):
        layer = canvas.layer()
        for v in vessels:
            if v.vein != vein:
                continue
            n = len(v.pts)
            k = max(1, min(n - 1, int(abs(v.w0 - v.w1) * SS) + 1))
            for j in range(k):
                a, b = j * (n - 1) // k, (j + 1) * (n - 1) // k
                layer.line(v.pts[a : b + 1], v.width((a + b) / 2))
        canvas.apply(layer, col, mode="multiply", strength=strength)

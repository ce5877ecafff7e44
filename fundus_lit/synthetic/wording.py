"""Word choice of the synthetic reports: impression names, hedges, spelling variants and the
seeded dice that picks among them, and the small helpers that join clauses into sentences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .generator import CATEGORIES

T = TypeVar("T")

NORMAL, MILD, MODERATE, SEVERE, PDR, GLAUCOMA, AMD, RVO, MYOPIA = CATEGORIES
DR_GRADES = (MILD, MODERATE, SEVERE, PDR)

# Certain impression wordings: each is the category's dictionary name or one of its aliases
# (tests check this against fundus.yaml), so any alias-based extractor maps it back.
IMPRESSION_NAMES: dict[str, tuple[str, ...]] = {
    NORMAL: ("normal fundus", "normal retina", "healthy fundus", "fundus within normal limits"),
    MILD: (
        "mild non-proliferative diabetic retinopathy",
        "mild NPDR",
        "mild nonproliferative diabetic retinopathy",
        "mild diabetic retinopathy",
        "mild background diabetic retinopathy",
        "DR grade 1",
    ),
    MODERATE: (
        "moderate non-proliferative diabetic retinopathy",
        "moderate NPDR",
        "moderate nonproliferative diabetic retinopathy",
        "moderate non-proliferative DR",
        "moderate diabetic retinopathy",
        "DR grade 2",
    ),
    SEVERE: (
        "severe non-proliferative diabetic retinopathy",
        "severe NPDR",
        "severe nonproliferative diabetic retinopathy",
        "pre-proliferative diabetic retinopathy",
        "severe diabetic retinopathy",
        "DR grade 3",
    ),
    PDR: (
        "proliferative diabetic retinopathy",
        "PDR",
        "proliferative DR",
        "proliferative retinopathy",
        "DR grade 4",
    ),
    GLAUCOMA: ("glaucoma", "glaucomatous optic neuropathy", "glaucomatous disc", "GON"),
    AMD: (
        "age-related macular degeneration",
        "AMD",
        "ARMD",
        "age-related maculopathy",
        "macular degeneration",
    ),
    RVO: ("retinal vein occlusion", "RVO", "retinal venous occlusion", "vein occlusion"),
    MYOPIA: (
        "pathologic myopia",
        "pathological myopia",
        "high myopia",
        "myopic degeneration",
        "degenerative myopia",
        "myopic fundus",
    ),
}

# Category -> the finding kind that implies it: only these may be left out of the impression
# or hedged, because the described finding still carries the label.
IMPLIED_BY: dict[str, str] = {
    PDR: "new_vessels",
    GLAUCOMA: "enlarged_cup",
    AMD: "drusen",
    RVO: "flame_haemorrhage",
    MYOPIA: "tessellation",
}

# Hedges per category. Glaucoma avoids "possible glaucoma" / "suspicious for glaucoma", which
# the dictionary files under *glaucoma suspect*, a different label.
HEDGES: dict[str, tuple[str, ...]] = {
    PDR: ("suspicious for {}", "probable {}", "likely {}"),
    GLAUCOMA: (
        "possible early glaucomatous cupping",
        "suspicious for glaucomatous optic neuropathy",
        "glaucoma cannot be excluded",
        "?glaucoma",
        "probable glaucomatous disc",
        "likely early glaucoma",
    ),
    AMD: ("probable {}", "likely {}", "suggestive of {}", "{} cannot be excluded"),
    RVO: ("suggestive of an old {}", "probable {}", "likely {}"),
    MYOPIA: ("probable {}", "likely {}", "suggestive of {}"),
}

TO_AMERICAN = (
    ("haemorrhage", "hemorrhage"),
    ("neovascularisation", "neovascularization"),
    ("fibre", "fiber"),
    ("calibre", "caliber"),
    ("centre", "center"),
    ("grey", "gray"),
)


@dataclass(frozen=True)
class SynthReport:
    """A report and the ground truth of what it asserts, for testing label extraction.

    Attributes:
        text: The report.
        categories: Truth labels: the image's categories.
        hedged: True categories the impression states with uncertainty (a subset of
            ``categories``; each still has its implying finding described).
        omitted: True categories the impression leaves out (recoverable from findings only).
        negated: Absent finding kinds and conditions the report explicitly denies.
        eye_prefix: Whether the report starts with "Right eye:" or similar.
        spelling: ``british`` (haemorrhage) or ``american`` (hemorrhage).
    """

    text: str
    categories: tuple[str, ...]
    hedged: tuple[str, ...]
    omitted: tuple[str, ...]
    negated: tuple[str, ...]
    eye_prefix: bool
    spelling: str


class Dice:
    """Uniforms from a numpy stream, drawn in blocks: one Generator call serves most of a report,
    which keeps report writing (and so SyntheticSource.load) well under a millisecond."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng, self._buf = rng, []

    def u(self) -> float:
        if not self._buf:
            self._buf = self._rng.random(48).tolist()[::-1]
        return self._buf.pop()

    def chance(self, p: float) -> bool:
        return self.u() < p

    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.u() * len(options))]

    def shuffled(self, items: Sequence[T]) -> list[T]:
        out = list(items)
        for i in range(len(out) - 1, 0, -1):
            j = int(self.u() * (i + 1))
            out[i], out[j] = out[j], out[i]
        return out


# ------------------------------------------------------------------------------ wording helpers


def amount(n: int, singular: str, plural: str, dice: Dice) -> str:
    """A count in words as graders write it; exact numbers only sometimes."""
    if n == 1:
        return f"{dice.pick(('a single', 'one', 'an isolated'))} {singular}"
    if dice.chance(0.2):
        return (
            f"{n} {plural}" if n <= 6 else f"{dice.pick(('about', 'approximately'))} {n} {plural}"
        )
    if n <= 3:
        words: tuple[str, ...] = ("a few", "occasional", "two or three" if n in (2, 3) else "a few")
    elif n <= 7:
        words = ("a few", "several", "some", "scattered")
    elif n <= 12:
        words = ("several", "multiple", "scattered", "a moderate number of")
    else:
        words = ("numerous", "many", "multiple", "extensive")
    return f"{dice.pick(words)} {plural}"


def where_phrase(region: str, dice: Dice) -> str:
    if region == "diffuse":
        return dice.pick(
            (
                "scattered throughout the posterior pole",
                "throughout the posterior pole",
                "across the fundus",
                "around the posterior pole",
            )
        )
    if region == "macula":
        return dice.pick(("at the macula", "around the fovea", "in the macular area"))
    if region == "optic disc":
        return dice.pick(("at the disc", "on the optic disc", "on the disc"))
    if region == "peripapillary":
        return dice.pick(("around the disc", "in the peripapillary retina", "adjacent to the disc"))
    if region.startswith("along the"):
        side = region.split()[2]  # superior / inferior
        return dice.pick((region, f"along the {side} vascular arcade"))
    return dice.pick((f"in the {region} quadrant", f"{region}ly", f"in the {region} retina"))


def join_sentences(clauses: Sequence[str]) -> str:
    """Capitalised, full-stopped sentences joined by spaces."""
    out = []
    for c in clauses:
        c = c.strip()
        out.append(c[0].upper() + c[1:] + ("" if c.endswith((".", "?")) else "."))
    return " ".join(out)


def join_words(items: Sequence[str], last: str = " and ") -> str:
    """'a, b and c'; denials pass ' or ', since 'no a, b and c' reads as one combination."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + last + items[-1]

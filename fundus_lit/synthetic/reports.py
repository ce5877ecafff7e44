"""Free-text fundus reports for synthetic images, with ground truth about what each one says.

Report-supervised recipes (ViLReF-style label extraction, report-text contrastive training) need
hospital-like reports whose labels are known exactly. Each report is written from the image's
*plan* (categories, findings, eye), so it costs no drawing, and from its own random stream
``default_rng([seed, index, 2])``, so adding reports changes no image and no label.

What the text guarantees, so that label extractors can be tested against it:

* The truth labels are the image's categories. Every true category is recoverable: either its
  dictionary name or alias appears affirmed (impression line), or the impression leaves it out
  and a finding that implies it is described (new vessels -> proliferative DR, enlarged cup ->
  glaucoma, drusen -> AMD, flame haemorrhages along a vein -> RVO, tessellation and
  peripapillary atrophy -> pathologic myopia). DR grades and ``normal`` cannot be read off
  lesion words, so they are always named.
* Every finding of the plan is described affirmatively, never hedged.
* Negations concern absent signs and conditions only. A negation cue (``no``, ``without``,
  ``not``) negates the rest of its clause, up to the next ``.`` or ``;``, and no affirmed
  finding ever follows it in that clause.
* Uncertain statements ("possible early glaucomatous cupping", "probable AMD") only ever hedge
  a TRUE category, in the impression, and only one whose implying finding is also described;
  the ground truth counts such a category as positive. No hedge ever mentions an absent one.
* Absent categories are never affirmed: "normal" / "healthy" appear only in normal reports,
  and phrases that are aliases of other dictionary categories ("suspicious for glaucoma" is
  *glaucoma suspect*, "no diabetic retinopathy" is a category of its own) are avoided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .generator import CATEGORIES, Finding, FundusSynth, _Plan

__all__ = [
    "IMPLIED_BY",
    "IMPRESSION_NAMES",
    "SynthReport",
    "report_details",
    "synthetic_report",
]

T = TypeVar("T")

_NORMAL, _MILD, _MODERATE, _SEVERE, _PDR, _GLAUCOMA, _AMD, _RVO, _MYOPIA = CATEGORIES
_DR = (_MILD, _MODERATE, _SEVERE, _PDR)

# Certain impression wordings: each is the category's dictionary name or one of its aliases
# (tests check this against fundus.yaml), so any alias-based extractor maps it back.
IMPRESSION_NAMES: dict[str, tuple[str, ...]] = {
    _NORMAL: ("normal fundus", "normal retina", "healthy fundus", "fundus within normal limits"),
    _MILD: (
        "mild non-proliferative diabetic retinopathy",
        "mild NPDR",
        "mild nonproliferative diabetic retinopathy",
        "mild diabetic retinopathy",
        "mild background diabetic retinopathy",
        "DR grade 1",
    ),
    _MODERATE: (
        "moderate non-proliferative diabetic retinopathy",
        "moderate NPDR",
        "moderate nonproliferative diabetic retinopathy",
        "moderate non-proliferative DR",
        "moderate diabetic retinopathy",
        "DR grade 2",
    ),
    _SEVERE: (
        "severe non-proliferative diabetic retinopathy",
        "severe NPDR",
        "severe nonproliferative diabetic retinopathy",
        "pre-proliferative diabetic retinopathy",
        "severe diabetic retinopathy",
        "DR grade 3",
    ),
    _PDR: (
        "proliferative diabetic retinopathy",
        "PDR",
        "proliferative DR",
        "proliferative retinopathy",
        "DR grade 4",
    ),
    _GLAUCOMA: ("glaucoma", "glaucomatous optic neuropathy", "glaucomatous disc", "GON"),
    _AMD: (
        "age-related macular degeneration",
        "AMD",
        "ARMD",
        "age-related maculopathy",
        "macular degeneration",
    ),
    _RVO: ("retinal vein occlusion", "RVO", "retinal venous occlusion", "vein occlusion"),
    _MYOPIA: (
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
    _PDR: "new_vessels",
    _GLAUCOMA: "enlarged_cup",
    _AMD: "drusen",
    _RVO: "flame_haemorrhage",
    _MYOPIA: "tessellation",
}

# Hedges per category. Glaucoma avoids "possible glaucoma" / "suspicious for glaucoma", which
# the dictionary files under *glaucoma suspect*, a different label.
_HEDGES: dict[str, tuple[str, ...]] = {
    _PDR: ("suspicious for {}", "probable {}", "likely {}"),
    _GLAUCOMA: (
        "possible early glaucomatous cupping",
        "suspicious for glaucomatous optic neuropathy",
        "glaucoma cannot be excluded",
        "?glaucoma",
        "probable glaucomatous disc",
        "likely early glaucoma",
    ),
    _AMD: ("probable {}", "likely {}", "suggestive of {}", "{} cannot be excluded"),
    _RVO: ("suggestive of an old {}", "probable {}", "likely {}"),
    _MYOPIA: ("probable {}", "likely {}", "suggestive of {}"),
}

_TO_AMERICAN = (
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


class _Dice:
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


def _amount(n: int, singular: str, plural: str, dice: _Dice) -> str:
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


def _where(region: str, dice: _Dice) -> str:
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


def _sentences(clauses: Sequence[str]) -> str:
    """Capitalised, full-stopped sentences joined by spaces."""
    out = []
    for c in clauses:
        c = c.strip()
        out.append(c[0].upper() + c[1:] + ("" if c.endswith((".", "?")) else "."))
    return " ".join(out)


def _join(items: Sequence[str], last: str = " and ") -> str:
    """'a, b and c'; denials pass ' or ', since 'no a, b and c' reads as one combination."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + last + items[-1]


def _cdr(dice: _Dice, glaucoma: bool) -> str:
    # Matches the generator's drawn ranges (0.65-0.85 glaucomatous, 0.3-0.45 healthy); the exact
    # value lives in the image stream, which reports must not touch.
    return dice.pick(("0.7", "0.75", "0.8", "0.85") if glaucoma else ("0.3", "0.35", "0.4"))


# ------------------------------------------------------------------------------ finding phrases


def _microaneurysm(f: Finding, d: _Dice) -> str:
    amt, where = _amount(f.count, "microaneurysm", "microaneurysms", d), _where(f.region, d)
    return d.pick(
        (
            f"{amt} {where}",
            f"there are {amt} {where}",
            f"{_amount(f.count, 'micro-aneurysm', 'micro-aneurysms', d)} {where}",
            f"{_amount(f.count, 'tiny red dot', 'tiny red dots', d)} {where}, "
            "consistent with microaneurysms",
        )
    )


def _haemorrhage(f: Finding, d: _Dice) -> str:
    noun = d.pick(("dot and blot", "intraretinal", "blot", "retinal"))
    amt = _amount(f.count, f"{noun} haemorrhage", f"{noun} haemorrhages", d)
    if f.region == "diffuse" and f.count >= 10 and d.chance(0.4):
        return f"{amt} in all four quadrants"
    return d.pick((f"{amt} {_where(f.region, d)}", f"there are {amt} {_where(f.region, d)}"))


def _hard_exudate(f: Finding, d: _Dice) -> str:
    where = _where(f.region, d)
    options = [
        f"{_amount(f.count, 'hard exudate', 'hard exudates', d)} {where}",
        f"{_amount(f.count, 'exudate', 'exudates', d)} {where}",
        f"{_amount(f.count, 'yellow lipid exudate', 'yellow lipid exudates', d)} {where}",
    ]
    if f.count >= 6:
        options.append(f"clusters of hard exudates {where}")
    if f.count >= 8 and f.region == "macula":
        options.append("a partial circinate ring of exudates around the fovea")
    return d.pick(options)


def _cotton_wool_spot(f: Finding, d: _Dice) -> str:
    singular, plural = d.pick(
        (
            ("cotton wool spot", "cotton wool spots"),
            ("cotton-wool spot", "cotton-wool spots"),
            ("soft exudate", "soft exudates"),
            ("nerve fibre layer infarct (cotton wool spot)", "cotton wool spots (CWS)"),
        )
    )
    return f"{_amount(f.count, singular, plural, d)} {_where(f.region, d)}"


def _new_vessels(f: Finding, d: _Dice) -> str:
    frond = "a frond" if f.count == 1 else "two fronds"
    if f.region == "optic disc":
        return d.pick(
            (
                "new vessels at the disc",
                "neovascularisation of the disc (NVD)",
                "NVD",
                f"{frond} of new vessels on the optic disc",
                "fine new vessels on the disc",
            )
        )
    where = _where(f.region, d)
    return d.pick(
        (
            f"new vessels elsewhere (NVE) {where}",
            f"neovascularisation {where}",
            f"{frond} of new vessels {where}",
            f"NVE {where}",
        )
    )


def _enlarged_cup(f: Finding, d: _Dice) -> str:
    cdr = _cdr(d, glaucoma=True)
    return d.pick(
        (
            f"enlarged optic cup, CDR {cdr}",
            f"cup-to-disc ratio of {cdr}",
            f"vertical cup:disc ratio {cdr} with thinning of the neuroretinal rim",
            f"increased cupping of the optic disc (CDR {cdr})",
            "large cup with a thin inferior rim",
        )
    )


def _drusen(f: Finding, d: _Dice) -> str:
    where = _where(f.region, d)
    return d.pick(
        (
            f"{_amount(f.count, 'druse', 'drusen', d)} {where}",
            f"{_amount(f.count, 'soft druse', 'soft drusen', d)} {where}",
            "macular drusen",
            f"{_amount(f.count, 'yellow druse', 'yellow drusen', d)} {where}",
            f"drusen scattered {where}",
        )
    )


def _flame_haemorrhage(f: Finding, d: _Dice) -> str:
    q = f.region  # the vein's quadrant
    return d.pick(
        (
            f"{_amount(f.count, 'flame haemorrhage', 'flame haemorrhages', d)} along the {q} vein",
            f"flame-shaped haemorrhages fanning out along the {q} vein",
            f"{_amount(f.count, 'splinter haemorrhage', 'splinter haemorrhages', d)} "
            f"in the {q} quadrant along a dilated vein",
            f"{_amount(f.count, 'flame haemorrhage', 'flame haemorrhages', d)} in the {q} sector",
            f"nerve fibre layer haemorrhages along the {q} vein",
        )
    )


def _tessellation(f: Finding, d: _Dice) -> str:
    return d.pick(
        (
            "tessellated fundus",
            "marked tessellation",
            "tigroid fundus",
            "tesselated fundus",
            "prominent choroidal vessels giving a tessellated appearance",
        )
    )


def _peripapillary_atrophy(f: Finding, d: _Dice) -> str:
    return d.pick(
        (
            "peripapillary atrophy",
            "temporal peripapillary atrophy",
            "myopic crescent at the temporal disc margin",
            "parapapillary atrophy",
            "peripapillary atrophy (PPA)",
        )
    )


_PHRASES: dict[str, Callable[[Finding, _Dice], str]] = {
    "microaneurysm": _microaneurysm,
    "haemorrhage": _haemorrhage,
    "hard_exudate": _hard_exudate,
    "cotton_wool_spot": _cotton_wool_spot,
    "new_vessels": _new_vessels,
    "enlarged_cup": _enlarged_cup,
    "drusen": _drusen,
    "flame_haemorrhage": _flame_haemorrhage,
    "tessellation": _tessellation,
    "peripapillary_atrophy": _peripapillary_atrophy,
}

# ------------------------------------------------------------------------------ negations

# (finding kinds that must all be absent, nouns for them, ground-truth tag)
_SIGNS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("microaneurysm",), ("microaneurysms",), "microaneurysm"),
    (("haemorrhage", "flame_haemorrhage"), ("haemorrhages", "retinal haemorrhages"), "haemorrhage"),
    (("hard_exudate",), ("exudates", "hard exudates"), "hard_exudate"),
    (("cotton_wool_spot",), ("cotton wool spots",), "cotton_wool_spot"),
    (("new_vessels",), ("new vessels",), "new_vessels"),
    (("drusen",), ("drusen",), "drusen"),
)
# absent condition -> denials; none is a dictionary alias of a "no ..." category
_DENIALS: dict[str, tuple[str, ...]] = {
    "diabetic retinopathy": (
        "no signs of diabetic retinopathy",
        "no evidence of diabetic retinopathy",
        "no diabetic changes",
    ),
    _PDR: (
        "no evidence of neovascularisation",
        "no neovascularisation",
        "no new vessels at the disc or elsewhere",
    ),
    _GLAUCOMA: (
        "no signs of glaucoma",
        "no glaucomatous cupping",
        "no evidence of glaucomatous optic neuropathy",
    ),
    _AMD: ("no features of macular degeneration", "no signs of age-related macular degeneration"),
    _RVO: ("no signs of vein occlusion", "no evidence of retinal vein occlusion"),
    _MYOPIA: ("no myopic degeneration", "no tessellation or peripapillary atrophy"),
}


def _absent_conditions(plan: _Plan) -> list[str]:
    cats, kinds = set(plan.categories), {f.kind for f in plan.findings}
    out = []
    if not cats & set(_DR):
        out.append("diabetic retinopathy")
    if _PDR not in cats and "new_vessels" not in kinds:
        out.append(_PDR)
    for cat in (_GLAUCOMA, _AMD, _RVO):
        if cat not in cats:
            out.append(cat)
    if _MYOPIA not in cats and not kinds & {"tessellation", "peripapillary_atrophy"}:
        out.append(_MYOPIA)
    return out


def _negations(plan: _Plan, d: _Dice, budget: int) -> tuple[list[str], list[str]]:
    """Up to `budget` denial sentences about absent signs and conditions, and their tags."""
    kinds = {f.kind for f in plan.findings}
    signs = [(d.pick(nouns), tag) for need, nouns, tag in _SIGNS if not kinds & set(need)]
    conditions = _absent_conditions(plan)
    sentences: list[str] = []
    tags: list[str] = []
    if signs and budget > 0 and d.chance(0.7):
        chosen = d.shuffled(signs)[: 1 + int(d.u() * min(3, len(signs)))]
        nouns = _join([noun for noun, _ in chosen], " or ")
        sentences.append(d.pick(("no {}", "there are no {}", "no {} seen", "no {} are seen")))
        sentences[-1] = sentences[-1].format(nouns)
        tags += [tag for _, tag in chosen]
        budget -= 1
    for cond in d.shuffled(conditions):
        if budget <= 0:
            break
        if d.chance(0.35) and not (cond == _PDR and "new_vessels" in tags):  # said already
            sentences.append(d.pick(_DENIALS[cond]))
            tags.append(cond)
            budget -= 1
    return sentences, tags


# ------------------------------------------------------------------------------ report assembly


def _eye_prefix(eye: str, d: _Dice) -> str:
    return d.pick((f"{eye.title()} eye: ", f"{eye} eye: ", f"{eye.upper()} EYE: ", f"{eye} eye - "))


def _disc_context(d: _Dice) -> tuple[str, bool]:
    """A disc description for eyes without glaucoma; avoids "normal"/"healthy", which would
    read as the *normal* label. Returns the clause and whether it denies glaucoma."""
    clause = d.pick(
        (
            f"optic disc pink with a small cup (CDR {_cdr(d, False)})",
            f"disc margins sharp, CDR {_cdr(d, False)}",
            f"optic disc well perfused, cup-to-disc ratio {_cdr(d, False)}",
        )
    )
    if d.chance(0.4):
        return clause + ", without signs of glaucoma", True
    return clause, False


def _impression(plan: _Plan, d: _Dice) -> tuple[str | None, list[str], list[str]]:
    """The diagnosis line, or None when every category is left to its findings."""
    kinds = {f.kind for f in plan.findings}
    parts, hedged, omitted = [], [], []
    for cat in plan.categories:
        backed = IMPLIED_BY.get(cat) in kinds
        if backed and d.chance(0.25):
            omitted.append(cat)
        elif backed and d.chance(0.25):
            parts.append(d.pick(_HEDGES[cat]).format(d.pick(IMPRESSION_NAMES[cat])))
            hedged.append(cat)
        else:
            parts.append(d.pick(IMPRESSION_NAMES[cat]))
    if not parts:
        return None, hedged, omitted
    # a hedge reads as its own clause ("moderate NPDR; probable AMD"), never "with probable"
    body = ("; " if hedged else d.pick((" and ", "; ", " with "))).join(parts)
    lead = d.pick(("Impression: ", "Diagnosis: ", "Conclusion: ", "Assessment: ", "", ""))
    if not lead and not hedged and d.chance(0.5):
        lead = d.pick(("Findings consistent with ", "Features of "))
    return lead + body, hedged, omitted


def _anatomical(plan: _Plan, d: _Dice, phrases: dict[Finding, str]) -> list[str]:
    """Disc / Macula / Vessels / Retina sections, the layout many screening forms use."""
    sections: dict[str, list[str]] = {"Disc": [], "Macula": [], "Vessels": [], "Retina": []}
    for f in plan.findings:
        if f.kind in ("enlarged_cup", "peripapillary_atrophy") or f.region == "optic disc":
            sections["Disc"].append(phrases[f])
        elif f.region == "macula":
            sections["Macula"].append(phrases[f])
        elif f.kind in ("flame_haemorrhage", "new_vessels"):
            sections["Vessels"].append(phrases[f])
        else:
            sections["Retina"].append(phrases[f])
    quiet = {
        "Disc": (f"pink, CDR {_cdr(d, False)}", "well-defined margins, small cup"),
        "Macula": ("foveal reflex present", "unremarkable"),
        "Vessels": ("calibre and course unremarkable", "unremarkable"),
        "Retina": ("flat", "unremarkable"),
    }
    out = []
    for name, items in sections.items():
        text = _join(items) if items else d.pick(quiet[name])
        out.append(f"{name}: {text}")
    return out


def _abnormal(plan: _Plan, d: _Dice) -> SynthReport:
    phrases = {f: _PHRASES[f.kind](f, d) for f in plan.findings}
    findings = list(phrases.values())
    if d.chance(0.3):
        findings = d.shuffled(findings)
    impression, hedged, omitted = _impression(plan, d)
    negations, negated = _negations(plan, d, budget=int(d.u() * 4))
    style = d.pick(("narrative", "narrative", "sections", "anatomical"))
    if style == "anatomical":
        body = _anatomical(plan, d, phrases)
    else:
        body = []
        i = 0
        while i < len(findings):  # pair some findings into one sentence
            if i + 1 < len(findings) and d.chance(0.35):
                body.append(f"{findings[i]}{d.pick((' and ', ', with ', '; '))}{findings[i + 1]}")
                i += 2
            else:
                body.append(findings[i])
                i += 1
        if _GLAUCOMA not in plan.categories and d.chance(0.35):
            disc, denies = _disc_context(d)
            body.append(disc)
            negated += [_GLAUCOMA] if denies else []
        if style == "sections":
            body[0] = "Findings: " + body[0][0].upper() + body[0][1:]
    if "noisy" in plan.attributes and d.chance(0.4):
        body.insert(0, d.pick(("image quality reduced", "hazy view", "view limited by media haze")))
    tail = [impression] if impression else []
    if impression and style == "narrative" and d.chance(0.3):
        text = _sentences([impression, *body, *negations])
    else:
        text = _sentences([*body, *negations, *tail])
    cats = tuple(plan.categories)
    return SynthReport(text, cats, tuple(hedged), tuple(omitted), tuple(negated), False, "")


def _normal(plan: _Plan, d: _Dice) -> SynthReport:
    name = d.pick(IMPRESSION_NAMES[_NORMAL])
    negations, negated = _negations(plan, d, budget=int(d.u() * 3))
    style = d.pick(("classic", "described", "brief", "anatomical"))
    if style == "classic":
        clauses = ["Normal fundus", "Disc, macula and vessels within normal limits", *negations]
    elif style == "described":
        clauses = [
            f"optic disc pink with sharp margins, CDR {_cdr(d, False)}",
            d.pick(("macula with a good foveal reflex", "macula unremarkable")),
            "vessels of normal calibre",
            *negations,
            d.pick(("Impression: ", "Conclusion: ", "")) + name,
        ]
    elif style == "brief":
        clauses = [name + d.pick(("", "; no abnormality detected")), *negations]
    else:
        clauses = [
            f"Disc: pink, CDR {_cdr(d, False)}",
            "Macula: foveal reflex present",
            "Vessels: normal calibre",
            *negations,
            d.pick(("Impression: ", "Diagnosis: ")) + name,
        ]
    return SynthReport(_sentences(clauses), (_NORMAL,), (), (), tuple(negated), False, "")


def _write(plan: _Plan, d: _Dice) -> SynthReport:
    draft = (_normal if plan.categories == [_NORMAL] else _abnormal)(plan, d)
    text = draft.text
    prefix = d.chance(0.35)
    if prefix:
        text = _eye_prefix(plan.eye, d) + text
    spelling = "american" if d.chance(0.45) else "british"
    if spelling == "american":
        for gb, us in _TO_AMERICAN:
            text = text.replace(gb, us).replace(gb.title(), us.title())
    return SynthReport(
        text, draft.categories, draft.hedged, draft.omitted, draft.negated, prefix, spelling
    )


def report_details(synth: FundusSynth, index: int) -> SynthReport:
    """The report of image `index` with its ground truth; deterministic in (seed, index)."""
    return _write(synth._plan(index), _Dice(np.random.default_rng([synth.seed, index, 2])))


def synthetic_report(synth: FundusSynth, index: int) -> str:
    """Free-text report of image `index`; drawing-free, so cheap enough for Source.load()."""
    return report_details(synth, index).text

"""Long, textbook-atlas style captions for synthetic fundus images (the MM-Retinal kind of text).

Caption-supervised pretraining learns from prose that walks through an image: which eye, the
disc and cup, the vessels, the macula, every lesion with where it lies and how much of it there
is, and the diagnosis. Like the reports, each caption is written from the image's *plan*, so it
draws no pixel, and from its own stream ``default_rng([seed, index, 3])``, so adding captions
changes no image, label or report.

What the text guarantees:

* Every finding of the plan is described affirmatively, with its region and extent.
* Every true category is named once, with its dictionary name or an alias (the report
  module's :data:`IMPRESSION_NAMES`, which the tests check against ``fundus.yaml``).
* "normal" and "healthy" appear only in captions of normal eyes, so the prose never affirms an
  absent category.
"""

from __future__ import annotations

import numpy as np

from .atlas_findings import FINDING_PHRASES
from .generator import CATEGORIES, Finding, FundusSynth, Plan
from .wording import IMPRESSION_NAMES, Dice, join_sentences

__all__ = ["atlas_caption"]

NORMAL, GLAUCOMA = CATEGORIES[0], CATEGORIES[5]

_DISC_KINDS = ("enlarged_cup", "peripapillary_atrophy")
_VESSEL_KINDS = ("flame_haemorrhage", "new_vessels")


# ------------------------------------------------------------------------------ caption sections


def _opening(plan: Plan, d: Dice, titled: bool = False) -> str:
    """The view; a titled caption has named the eye already, so it is left out here."""
    side = "right" if plan.eye == "right" else "left"  # the disc is on the nasal side
    if titled:
        views: tuple[str, ...] = (
            "colour fundus photograph centred on the macula",
            f"45-degree colour fundus photograph with the optic disc on the {side}",
        )
    else:
        views = (
            f"colour fundus photograph of the {plan.eye} eye, centred on the macula",
            f"posterior pole of a {plan.eye} eye in a 45-degree colour fundus photograph",
            f"{plan.eye} eye, colour fundus photograph with the optic disc on the {side}",
        )
    view = d.pick(views)
    if "noisy" in plan.attributes:
        view += d.pick(("; the view is slightly hazy", "; the image is soft and unevenly exposed"))
    return view


def _quiet(section: str, plan: Plan, d: Dice) -> str:
    """Unremarkable wording for a section without findings. Never "normal", which would affirm
    that label, and no "free of lesions" where lesions elsewhere may reach the spot."""
    diffuse = any(f.region == "diffuse" for f in plan.findings)
    options = {
        "disc": (
            f"the optic disc is pink with sharp margins and a small central cup "
            f"(cup-to-disc ratio {d.pick(('0.3', '0.35', '0.4'))})",
            "the disc is flat and well perfused, with a crisp outline and a shallow cup",
        ),
        "vessels": (
            "the arteries and veins arch smoothly along the superior and inferior arcades "
            "with regular calibre",
            "the vessels leave the disc in four main branches and taper evenly towards the "
            "periphery",
        ),
        "macula": (
            ("the vessel-free macula lies about two disc diameters temporal to the disc",)
            if diffuse
            else (
                "the macula is darker and free of lesions, with a bright foveal reflex",
                "the vessel-free macula lies about two disc diameters temporal to the disc",
            )
        ),
        "retina": (
            ("elsewhere the retina is flat", "the rest of the retina is flat and orange-red")
            if plan.findings
            else (
                "the background retina is evenly orange-red",
                "the surrounding retina is flat, with a faint choroidal texture",
            )
        ),
    }
    return d.pick(options[section])


def _section(f: Finding) -> str:
    if f.kind in _DISC_KINDS or f.region == "optic disc":
        return "disc"
    if f.kind in _VESSEL_KINDS:
        return "vessels"
    if f.region == "macula":
        return "macula"
    return "retina"


def _named(plan: Plan, d: Dice) -> str:
    """Every true category by a dictionary name or alias, as one noun phrase."""
    names = [d.pick(IMPRESSION_NAMES[cat]) for cat in plan.categories]
    if len(names) == 1:
        return names[0]
    return d.pick(
        (
            f"{names[0]} with coexisting {names[1]}",
            f"{names[0]} together with {names[1]}",
            f"{names[0]} and {names[1]}",
        )
    )


def _diagnosis(plan: Plan, named: str, d: Dice) -> str:
    if plan.categories == [NORMAL]:
        return d.pick(
            (
                f"appearance of a {named}",
                f"this is a textbook example of a {named}",
                f"diagnosis: {named}",
            )
        )
    return d.pick(
        (
            f"these appearances are characteristic of {named}",
            f"the findings are typical of {named}",
            f"diagnosis: {named}",
            f"classic features of {named}",
        )
    )


def _write(plan: Plan, d: Dice) -> str:
    sections: dict[str, list[str]] = {"disc": [], "vessels": [], "macula": [], "retina": []}
    for f in plan.findings:
        sections[_section(f)].append(FINDING_PHRASES[f.kind](f, d))
    body = []
    for name, sentences in sections.items():
        if name == "disc" and GLAUCOMA not in plan.categories and sentences:
            sentences.insert(0, _quiet("disc", plan, d))  # atrophy or NVD, yet an ordinary cup
        body += sentences or [_quiet(name, plan, d)]
    if d.chance(0.3):
        body = d.shuffled(body)
    named = _named(plan, d)
    if d.chance(0.25):  # atlas plates often lead with the diagnosis as a title
        title = f"{named} in the {plan.eye} eye: {_opening(plan, d, titled=True)}"
        return join_sentences([title, *body])
    return join_sentences([_opening(plan, d), *body, _diagnosis(plan, named, d)])


def atlas_caption(synth: FundusSynth, index: int) -> str:
    """Atlas caption of image `index`; deterministic in (seed, index) and drawing-free, so it is
    cheap enough for ``Source.load()``."""
    return _write(synth._plan(index), Dice(np.random.default_rng([synth.seed, index, 3])))

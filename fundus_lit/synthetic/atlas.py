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

from collections.abc import Callable

import numpy as np

from .generator import CATEGORIES, Finding, FundusSynth, Plan
from .wording import IMPRESSION_NAMES, Dice, join_sentences

__all__ = ["atlas_caption"]

NORMAL, GLAUCOMA = CATEGORIES[0], CATEGORIES[5]

_DISC_KINDS = ("enlarged_cup", "peripapillary_atrophy")
_VESSEL_KINDS = ("flame_haemorrhage", "new_vessels")


# ------------------------------------------------------------------------------ wording helpers


def _extent(n: int, singular: str, plural: str, d: Dice) -> tuple[str, bool]:
    """How much of a lesion there is, as an atlas grades it, and whether the verb is plural."""
    if n == 1:
        return f"{d.pick(('a single', 'one', 'an isolated'))} {singular}", False
    if d.chance(0.25):
        return f"{n} {plural}", True
    if n <= 3:
        words: tuple[str, ...] = ("a few", "occasional", "two or three")
    elif n <= 7:
        words = ("several", "a handful of", "scattered")
    elif n <= 12:
        words = ("multiple", "a moderate number of", "numerous")
    else:
        words = ("numerous", "extensive", "more than a dozen", "a great many")
    return f"{d.pick(words)} {plural}", True


def where_phrase(region: str, d: Dice, count: int = 1) -> str:
    if region == "diffuse":
        spread = ("in all four quadrants",) if count >= 4 else ()
        return d.pick(
            (
                "throughout the posterior pole",
                "across the posterior pole and mid-periphery",
                *spread,
            )
        )
    if region == "macula":
        return d.pick(("at the macula", "within the macular area", "around the fovea"))
    if region == "optic disc":
        return d.pick(("on the optic disc", "on the surface of the disc"))
    if region == "peripapillary":
        return d.pick(("around the disc", "in the peripapillary retina", "close to the disc"))
    if region.startswith("along the"):
        side = region.split()[2]  # superior / inferior
        return d.pick((region, f"along the {side} vascular arcade"))
    return d.pick((f"in the {region} quadrant", f"in the {region} retina"))


def _be(plural: bool) -> str:
    return "are" if plural else "is"


# ------------------------------------------------------------------------------ finding sentences


def _microaneurysm(f: Finding, d: Dice) -> str:
    amt, pl = _extent(f.count, "microaneurysm", "microaneurysms", d)
    where = where_phrase(f.region, d, f.count)
    return d.pick(
        (
            f"{amt}, seen as tiny sharply outlined red dots, {_be(pl)} present {where}",
            f"{where} there {_be(pl)} {amt}, pinpoint red dots smaller than the calibre of a "
            "main vein",
            f"{amt} {_be(pl)} visible {where} as minute round red dots",
        )
    )


def _haemorrhage(f: Finding, d: Dice) -> str:
    kind = d.pick(("dot and blot", "intraretinal", "blot"))
    amt, pl = _extent(f.count, f"{kind} haemorrhage", f"{kind} haemorrhages", d)
    where = where_phrase(f.region, d, f.count)
    return d.pick(
        (
            f"{amt} {_be(pl)} scattered {where}, dark red with rounded edges",
            f"{where} lie {amt}" if pl else f"{where} lies {amt}",
            f"{amt}, deeper and darker than the vessels, {_be(pl)} seen {where}",
        )
    )


def _hard_exudate(f: Finding, d: Dice) -> str:
    amt, pl = _extent(f.count, "hard exudate", "hard exudates", d)
    where = where_phrase(f.region, d, f.count)
    options = [
        f"{amt}, bright yellow waxy deposits with crisp margins, {_be(pl)} seen {where}",
        f"{where} there {_be(pl)} {amt} of yellow lipid",
    ]
    if f.count >= 8 and f.region == "macula":
        options.append(f"{amt} form a partial circinate ring around the fovea")
    return d.pick(options)


def _cotton_wool_spot(f: Finding, d: Dice) -> str:
    amt, pl = _extent(f.count, "cotton wool spot", "cotton wool spots", d)
    where = where_phrase(f.region, d, f.count)
    return d.pick(
        (
            f"{amt}, {'fluffy white patches' if pl else 'a fluffy white patch'} with feathery "
            f"borders, {_be(pl)} present {where}",
            f"{where} {amt} {_be(pl)} seen as pale, ill-defined swellings of the nerve fibre layer",
        )
    )


def _new_vessels(f: Finding, d: Dice) -> str:
    fronds, s = ("a fine frond", "s") if f.count == 1 else ("two fine fronds", "")
    if f.region == "optic disc":
        return d.pick(
            (
                f"{fronds} of new vessels grow{s} on the surface of the optic disc "
                "(neovascularisation of the disc)",
                f"a delicate tangle of new vessels loops over the disc, {fronds} in all",
            )
        )
    where = where_phrase(f.region, d, f.count)
    return d.pick(
        (
            f"{fronds} of new vessels elsewhere (NVE) arise{s} {where}",
            f"{where}, {fronds} of abnormal new vessels sprout{s} from a vein",
        )
    )


def _enlarged_cup(f: Finding, d: Dice) -> str:
    cdr = d.pick(("0.7", "0.75", "0.8", "0.85"))
    return d.pick(
        (
            f"the optic cup is enlarged and pale, with a cup-to-disc ratio of about {cdr} and a "
            "thin neuroretinal rim",
            f"the disc shows deep cupping (vertical cup-to-disc ratio {cdr}) with thinning of the "
            "rim, most marked inferiorly",
            f"a large excavated cup occupies most of the disc (cup-to-disc ratio {cdr}) and the "
            "vessels bend sharply over its edge",
        )
    )


def _drusen(f: Finding, d: Dice) -> str:
    amt, pl = _extent(f.count, "druse", "drusen", d)
    where = where_phrase(f.region, d, f.count)
    return d.pick(
        (
            f"{amt}, round yellow deposits beneath the retina, {_be(pl)} clustered {where}",
            f"{where} there {_be(pl)} {amt} of varying size, some soft and ill-defined",
            f"{amt} {_be(pl)} seen {where} as pale yellow spots at the level of the pigment "
            "epithelium",
        )
    )


def _flame_haemorrhage(f: Finding, d: Dice) -> str:
    amt, pl = _extent(f.count, "flame haemorrhage", "flame haemorrhages", d)
    q = f.region  # the occluded vein's quadrant
    return d.pick(
        (
            f"the {q} branch vein is dilated and tortuous, and {amt} fan out along its course",
            f"{amt} {_be(pl)} spread in a wedge along the {q} vein, which is engorged beyond "
            "the occlusion",
            f"in the {q} quadrant {amt} follow the nerve fibre layer along a dilated vein",
        )
    )


def _tessellation(f: Finding, d: Dice) -> str:
    return d.pick(
        (
            "the background is tessellated, large choroidal vessels showing through a thin "
            "pigment epithelium",
            "a tigroid, tessellated pattern of choroidal vessels covers the posterior pole",
        )
    )


def _peripapillary_atrophy(f: Finding, d: Dice) -> str:
    return d.pick(
        (
            "a pale crescent of peripapillary atrophy borders the temporal disc margin",
            "a myopic crescent of bare sclera flanks the temporal side of the disc",
        )
    )


FINDING_PHRASES: dict[str, Callable[[Finding, Dice], str]] = {
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

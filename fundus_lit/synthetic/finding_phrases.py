"""One phrase function per finding kind: how a report describes a drawn lesion (count, size,
location), worded by the report's dice."""

from __future__ import annotations

from collections.abc import Callable

from .generator import Finding
from .wording import Dice, amount, where_phrase


def cup_disc_ratio(dice: Dice, glaucoma: bool) -> str:
    # Matches the generator's drawn ranges (0.65-0.85 glaucomatous, 0.3-0.45 healthy); the exact
    # value lives in the image stream, which reports must not touch.
    return dice.pick(("0.7", "0.75", "0.8", "0.85") if glaucoma else ("0.3", "0.35", "0.4"))


# ------------------------------------------------------------------------------ finding phrases


def _microaneurysm(f: Finding, d: Dice) -> str:
    amt, where = amount(f.count, "microaneurysm", "microaneurysms", d), where_phrase(f.region, d)
    return d.pick(
        (
            f"{amt} {where}",
            f"there are {amt} {where}",
            f"{amount(f.count, 'micro-aneurysm', 'micro-aneurysms', d)} {where}",
            f"{amount(f.count, 'tiny red dot', 'tiny red dots', d)} {where}, "
            "consistent with microaneurysms",
        )
    )


def _haemorrhage(f: Finding, d: Dice) -> str:
    noun = d.pick(("dot and blot", "intraretinal", "blot", "retinal"))
    amt = amount(f.count, f"{noun} haemorrhage", f"{noun} haemorrhages", d)
    if f.region == "diffuse" and f.count >= 10 and d.chance(0.4):
        return f"{amt} in all four quadrants"
    return d.pick(
        (f"{amt} {where_phrase(f.region, d)}", f"there are {amt} {where_phrase(f.region, d)}")
    )


def _hard_exudate(f: Finding, d: Dice) -> str:
    where = where_phrase(f.region, d)
    options = [
        f"{amount(f.count, 'hard exudate', 'hard exudates', d)} {where}",
        f"{amount(f.count, 'exudate', 'exudates', d)} {where}",
        f"{amount(f.count, 'yellow lipid exudate', 'yellow lipid exudates', d)} {where}",
    ]
    if f.count >= 6:
        options.append(f"clusters of hard exudates {where}")
    if f.count >= 8 and f.region == "macula":
        options.append("a partial circinate ring of exudates around the fovea")
    return d.pick(options)


def _cotton_wool_spot(f: Finding, d: Dice) -> str:
    singular, plural = d.pick(
        (
            ("cotton wool spot", "cotton wool spots"),
            ("cotton-wool spot", "cotton-wool spots"),
            ("soft exudate", "soft exudates"),
            ("nerve fibre layer infarct (cotton wool spot)", "cotton wool spots (CWS)"),
        )
    )
    return f"{amount(f.count, singular, plural, d)} {where_phrase(f.region, d)}"


def _new_vessels(f: Finding, d: Dice) -> str:
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
    where = where_phrase(f.region, d)
    return d.pick(
        (
            f"new vessels elsewhere (NVE) {where}",
            f"neovascularisation {where}",
            f"{frond} of new vessels {where}",
            f"NVE {where}",
        )
    )


def _enlarged_cup(f: Finding, d: Dice) -> str:
    cdr = cup_disc_ratio(d, glaucoma=True)
    return d.pick(
        (
            f"enlarged optic cup, CDR {cdr}",
            f"cup-to-disc ratio of {cdr}",
            f"vertical cup:disc ratio {cdr} with thinning of the neuroretinal rim",
            f"increased cupping of the optic disc (CDR {cdr})",
            "large cup with a thin inferior rim",
        )
    )


def _drusen(f: Finding, d: Dice) -> str:
    where = where_phrase(f.region, d)
    return d.pick(
        (
            f"{amount(f.count, 'druse', 'drusen', d)} {where}",
            f"{amount(f.count, 'soft druse', 'soft drusen', d)} {where}",
            "macular drusen",
            f"{amount(f.count, 'yellow druse', 'yellow drusen', d)} {where}",
            f"drusen scattered {where}",
        )
    )


def _flame_haemorrhage(f: Finding, d: Dice) -> str:
    q = f.region  # the vein's quadrant
    return d.pick(
        (
            f"{amount(f.count, 'flame haemorrhage', 'flame haemorrhages', d)} along the {q} vein",
            f"flame-shaped haemorrhages fanning out along the {q} vein",
            f"{amount(f.count, 'splinter haemorrhage', 'splinter haemorrhages', d)} "
            f"in the {q} quadrant along a dilated vein",
            f"{amount(f.count, 'flame haemorrhage', 'flame haemorrhages', d)} in the {q} sector",
            f"nerve fibre layer haemorrhages along the {q} vein",
        )
    )


def _tessellation(f: Finding, d: Dice) -> str:
    return d.pick(
        (
            "tessellated fundus",
            "marked tessellation",
            "tigroid fundus",
            "tesselated fundus",
            "prominent choroidal vessels giving a tessellated appearance",
        )
    )


def _peripapillary_atrophy(f: Finding, d: Dice) -> str:
    return d.pick(
        (
            "peripapillary atrophy",
            "temporal peripapillary atrophy",
            "myopic crescent at the temporal disc margin",
            "parapapillary atrophy",
            "peripapillary atrophy (PPA)",
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

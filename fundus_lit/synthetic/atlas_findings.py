"""Atlas-caption sentences for each kind of finding: what it looks like, where and how much.

One phrase function per finding kind, written from the finding's plan (kind, region, count), so
the caption describes every lesion affirmatively with its region and extent; the caption's
sections and diagnosis are composed in :mod:`.atlas`.
"""

from __future__ import annotations

from collections.abc import Callable

from .generator import Finding
from .wording import Dice


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

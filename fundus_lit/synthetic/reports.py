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

import numpy as np

from .finding_phrases import FINDING_PHRASES, cup_disc_ratio
from .generator import Finding, FundusSynth, Plan
from .wording import (
    AMD,
    DR_GRADES,
    GLAUCOMA,
    HEDGES,
    IMPLIED_BY,
    IMPRESSION_NAMES,
    MYOPIA,
    NORMAL,
    PDR,
    RVO,
    TO_AMERICAN,
    Dice,
    SynthReport,
    join_sentences,
    join_words,
)

__all__ = [
    "IMPLIED_BY",
    "IMPRESSION_NAMES",
    "SynthReport",
    "report_details",
    "synthetic_report",
]


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
    PDR: (
        "no evidence of neovascularisation",
        "no neovascularisation",
        "no new vessels at the disc or elsewhere",
    ),
    GLAUCOMA: (
        "no signs of glaucoma",
        "no glaucomatous cupping",
        "no evidence of glaucomatous optic neuropathy",
    ),
    AMD: ("no features of macular degeneration", "no signs of age-related macular degeneration"),
    RVO: ("no signs of vein occlusion", "no evidence of retinal vein occlusion"),
    MYOPIA: ("no myopic degeneration", "no tessellation or peripapillary atrophy"),
}


def _absent_conditions(plan: Plan) -> list[str]:
    cats, kinds = set(plan.categories), {f.kind for f in plan.findings}
    out = []
    if not cats & set(DR_GRADES):
        out.append("diabetic retinopathy")
    if PDR not in cats and "new_vessels" not in kinds:
        out.append(PDR)
    for cat in (GLAUCOMA, AMD, RVO):
        if cat not in cats:
            out.append(cat)
    if MYOPIA not in cats and not kinds & {"tessellation", "peripapillary_atrophy"}:
        out.append(MYOPIA)
    return out


def _negations(plan: Plan, d: Dice, budget: int) -> tuple[list[str], list[str]]:
    """Up to `budget` denial sentences about absent signs and conditions, and their tags."""
    kinds = {f.kind for f in plan.findings}
    signs = [(d.pick(nouns), tag) for need, nouns, tag in _SIGNS if not kinds & set(need)]
    conditions = _absent_conditions(plan)
    sentences: list[str] = []
    tags: list[str] = []
    if signs and budget > 0 and d.chance(0.7):
        chosen = d.shuffled(signs)[: 1 + int(d.u() * min(3, len(signs)))]
        nouns = join_words([noun for noun, _ in chosen], " or ")
        sentences.append(d.pick(("no {}", "there are no {}", "no {} seen", "no {} are seen")))
        sentences[-1] = sentences[-1].format(nouns)
        tags += [tag for _, tag in chosen]
        budget -= 1
    for cond in d.shuffled(conditions):
        if budget <= 0:
            break
        if d.chance(0.35) and not (cond == PDR and "new_vessels" in tags):  # said already
            sentences.append(d.pick(_DENIALS[cond]))
            tags.append(cond)
            budget -= 1
    return sentences, tags


# ------------------------------------------------------------------------------ report assembly


def _eye_prefix(eye: str, d: Dice) -> str:
    return d.pick((f"{eye.title()} eye: ", f"{eye} eye: ", f"{eye.upper()} EYE: ", f"{eye} eye - "))


def _disc_context(d: Dice) -> tuple[str, bool]:
    """A disc description for eyes without glaucoma; avoids "normal"/"healthy", which would
    read as the *normal* label. Returns the clause and whether it denies glaucoma."""
    clause = d.pick(
        (
            f"optic disc pink with a small cup (CDR {cup_disc_ratio(d, False)})",
            f"disc margins sharp, CDR {cup_disc_ratio(d, False)}",
            f"optic disc well perfused, cup-to-disc ratio {cup_disc_ratio(d, False)}",
        )
    )
    if d.chance(0.4):
        return clause + ", without signs of glaucoma", True
    return clause, False


def _impression(plan: Plan, d: Dice) -> tuple[str | None, list[str], list[str]]:
    """The diagnosis line, or None when every category is left to its findings."""
    kinds = {f.kind for f in plan.findings}
    parts, hedged, omitted = [], [], []
    for cat in plan.categories:
        backed = IMPLIED_BY.get(cat) in kinds
        if backed and d.chance(0.25):
            omitted.append(cat)
        elif backed and d.chance(0.25):
            parts.append(d.pick(HEDGES[cat]).format(d.pick(IMPRESSION_NAMES[cat])))
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


def _anatomical(plan: Plan, d: Dice, phrases: dict[Finding, str]) -> list[str]:
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
        "Disc": (f"pink, CDR {cup_disc_ratio(d, False)}", "well-defined margins, small cup"),
        "Macula": ("foveal reflex present", "unremarkable"),
        "Vessels": ("calibre and course unremarkable", "unremarkable"),
        "Retina": ("flat", "unremarkable"),
    }
    out = []
    for name, items in sections.items():
        text = join_words(items) if items else d.pick(quiet[name])
        out.append(f"{name}: {text}")
    return out


def _abnormal(plan: Plan, d: Dice) -> SynthReport:
    phrases = {f: FINDING_PHRASES[f.kind](f, d) for f in plan.findings}
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
        if GLAUCOMA not in plan.categories and d.chance(0.35):
            disc, denies = _disc_context(d)
            body.append(disc)
            negated += [GLAUCOMA] if denies else []
        if style == "sections":
            body[0] = "Findings: " + body[0][0].upper() + body[0][1:]
    if "noisy" in plan.attributes and d.chance(0.4):
        body.insert(0, d.pick(("image quality reduced", "hazy view", "view limited by media haze")))
    tail = [impression] if impression else []
    if impression and style == "narrative" and d.chance(0.3):
        text = join_sentences([impression, *body, *negations])
    else:
        text = join_sentences([*body, *negations, *tail])
    cats = tuple(plan.categories)
    return SynthReport(text, cats, tuple(hedged), tuple(omitted), tuple(negated), False, "")


def _normal(plan: Plan, d: Dice) -> SynthReport:
    name = d.pick(IMPRESSION_NAMES[NORMAL])
    negations, negated = _negations(plan, d, budget=int(d.u() * 3))
    style = d.pick(("classic", "described", "brief", "anatomical"))
    if style == "classic":
        clauses = ["Normal fundus", "Disc, macula and vessels within normal limits", *negations]
    elif style == "described":
        clauses = [
            f"optic disc pink with sharp margins, CDR {cup_disc_ratio(d, False)}",
            d.pick(("macula with a good foveal reflex", "macula unremarkable")),
            "vessels of normal calibre",
            *negations,
            d.pick(("Impression: ", "Conclusion: ", "")) + name,
        ]
    elif style == "brief":
        clauses = [name + d.pick(("", "; no abnormality detected")), *negations]
    else:
        clauses = [
            f"Disc: pink, CDR {cup_disc_ratio(d, False)}",
            "Macula: foveal reflex present",
            "Vessels: normal calibre",
            *negations,
            d.pick(("Impression: ", "Diagnosis: ")) + name,
        ]
    return SynthReport(join_sentences(clauses), (NORMAL,), (), (), tuple(negated), False, "")


def _write(plan: Plan, d: Dice) -> SynthReport:
    draft = (_normal if plan.categories == [NORMAL] else _abnormal)(plan, d)
    text = draft.text
    prefix = d.chance(0.35)
    if prefix:
        text = _eye_prefix(plan.eye, d) + text
    spelling = "american" if d.chance(0.45) else "british"
    if spelling == "american":
        for gb, us in TO_AMERICAN:
            text = text.replace(gb, us).replace(gb.title(), us.title())
    return SynthReport(
        text, draft.categories, draft.hedged, draft.omitted, draft.negated, prefix, spelling
    )


def report_details(synth: FundusSynth, index: int) -> SynthReport:
    """The report of image `index` with its ground truth; deterministic in (seed, index)."""
    return _write(synth._plan(index), Dice(np.random.default_rng([synth.seed, index, 2])))


def synthetic_report(synth: FundusSynth, index: int) -> str:
    """Free-text report of image `index`; drawing-free, so cheap enough for Source.load()."""
    return report_details(synth, index).text

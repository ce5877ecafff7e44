"""Report text before label extraction: the phrase tables the dictionary lacks (synonyms, normal
remarks, negation and uncertainty cues), boilerplate and stop words, and the normalisation every
report goes through (spelling folding, cup-to-disc phrases, words). The extractor uses them."""

from __future__ import annotations

import re
from decimal import Decimal

#: Frequent report phrasing the dictionary lacks: phrase -> dictionary category. Applied only when
#: the category is in the vocabulary and no dictionary name or alias already claims the phrase.
SYNONYMS: dict[str, str] = {
    "tessellated": "tessellation",  # "the fundus is tessellated"
    "leopard fundus": "tessellation",  # common translation of tessellated fundus
    "cupping": "optic disc cupping",  # "cupping of the disc", "glaucomatous cupping"
    "photocoagulation": "laser scars",  # "laser photocoagulation", "s/p photocoagulation"
    "cotton wool": "cotton wool spots",  # "cotton-wool patches"
    "retinal bleeding": "hemorrhages",
    "swollen disc": "optic disc edema",
    "hypertensive changes": "hypertensive retinopathy",
    "tiny red dot": "microaneurysms",  # "tiny red dots, consistent with microaneurysms"
    "small red dot": "microaneurysms",
    # a thinning neuroretinal rim is the enlarging cup seen from the rim: one glaucomatous change
    "neuroretinal rim thinning": "optic disc cupping",
    "thinning of the neuroretinal rim": "optic disc cupping",
    "thin neuroretinal rim": "optic disc cupping",
    "rim thinning": "optic disc cupping",
}
#: Phrases that describe a healthy structure. A small or physiological cup is the normal disc,
#: not a label of its own: mapping it to ``normal`` would state a verdict on the whole eye from
#: one structure (``normal`` is residual, and a restricted vocabulary may leave out the finding
#: that should drop it), and to ``no glaucoma`` would infer a diagnosis from a sign. They are
#: whole phrases rather than :data:`BOILERPLATE` words because single words are not safe:
#: "well perfused" is normal, "poorly perfused" is ischaemia; "foveal reflex present" is normal,
#: "dull foveal reflex" is not.
NORMAL_REMARKS: tuple[str, ...] = (
    "small cup",
    "small optic cup",
    "physiological cup",
    "physiologic cup",
    "physiological cupping",
    "physiologic cupping",
    "foveal reflex present",
    "foveal reflex seen",
    "foveal reflex visible",
    "well perfused",
    "well defined margin",
)
#: Cup-to-disc ratio bands: 0.7 or more is the usual screening threshold of a large cup, and
#: below 0.6 is within the normal range. A ratio in between is borderline, a call the report's
#: other words must make, so it is left as written and stays visible among unmapped phrases.
LARGE_CDR, NORMAL_CDR_BELOW = Decimal("0.7"), Decimal("0.6")
#: Dictionary aliases not matched in running text: "no fundus" (of "no fundus image") is the
#: start of "no fundus abnormality" far more often than a verdict on the photograph.
AMBIGUOUS_ALIASES = frozenset({"no fundus"})


def split_phrases(text: str, sep: str = "|") -> list[str]:
    """The entries of a separated table string (keeps the word tables compact)."""
    return text.split(sep)


# cue phrase -> (kind, covers earlier mentions, covers later mentions)
NEG, UNC, STOP = "neg", "unc", "stop"
CUES: dict[str, tuple[str, bool, bool]] = {
    **dict.fromkeys(
        split_phrases(
            "no|not|without|absence of|negative for|free of|no sign of|no evidence of"
            "|nor|neither|lack of|never|denies|rules out"
        ),
        (NEG, False, True),
    ),
    **dict.fromkeys(
        split_phrases(
            "absent|not seen|not present|not detected|not observed|not identified|not noted"
            "|not visible|not found|ruled out|excluded|negative|resolved"
        ),
        (NEG, True, False),
    ),
    **dict.fromkeys(
        split_phrases(
            "possible|possibly|suspected|suspect|suspicious|suspicious for|suspicious of"
            "|suspicion of|suspicion|probable|probably|likely|may|may be|might|could be|query"
            "|questionable|equivocal|borderline|?|rule out|to rule out|r o|cannot exclude"
            "|can not exclude|cannot rule out|can not rule out"
        ),
        (UNC, True, True),
    ),
    # what comes before "suggestive of" is the evidence, stated as fact: "CDR 0.8 suggestive of
    # glaucoma" is a large cup and uncertain glaucoma
    "suggestive of": (UNC, False, True),
    **dict.fromkeys(
        split_phrases(
            "cannot be excluded|can not be excluded|not excluded|not ruled out"
            "|cannot be ruled out|can not be ruled out"
        ),
        (UNC, True, False),
    ),
    **dict.fromkeys(
        split_phrases(
            "but|however|although|though|whereas|while|except|except for|apart from|aside from"
            "|other than|besides|otherwise"
        ),
        (STOP, False, False),
    ),
}
# words that make a mention-free segment normal or administrative boilerplate, not a finding
BOILERPLATE = frozenset(
    split_phrases(
        "normal unremarkable healthy clear intact sharp pink flat attached good regular stable"
        " unchanged wnl nad nil follow review refer referral recommend recommended advise advised"
        " repeat appointment month week year annual screening clinic ophthalmologist",
        " ",
    )
)
STOPWORDS = frozenset(
    split_phrases(
        "the and for with are was were been there this that these those its from both left right"
        " eye fundus retina retinal photograph image picture show showing shown seen noted present"
        " visible observed found appear appears also some few several area region side which has"
        " have had into onto over under near around"
        " disc optic macula fovea vessel",  # a structure named alone states no finding
        " ",
    )
)

EYE_RE = re.compile(r"\b(?:(?:left|right|both)\s+eyes?|od|os|ou)\s*[:\-]", re.IGNORECASE)
SENTENCE_RE = re.compile(r"(?<=[.!?;])\s+|(?<=;)|\n+")
WORD_RE = re.compile(r"[a-z0-9]+|[?,]")
TITLE_RE = re.compile(r"\bDr\.(?=\s+[A-Z][a-z])")  # "Dr. Smith" is a doctor, not retinopathy
PREFIX_RE = re.compile(
    r"\b(non|pre|intra)(?=(?:proliferative|exudative|neovascular|retinal|diabetic|glaucomatous)\b)"
)
# "CDR 0.8", "vertical cup-to-disc ratio of 0.75", "C/D 0.3", "cup:disc ratio = .4"
CDR_RE = re.compile(
    r"(?<![a-z0-9])(?:v?cdr|c\s*[/:]\s*d(?:\s+ratio)?|cd\s+ratio"
    r"|cup\s*[-:/]?\s*(?:to\s*-?\s*)?disc(?:\s+ratio)?)"
    r"(?:\s*(?:[:=~]|of|is|was|about|approximately|around)(?![a-z]))*\s*"
    r"(\d*\.\d+|[01](?![.\d]))"
)
SPELLING = (("aem", "em"), ("oedem", "edem"), ("isation", "ization"), ("fibre", "fiber"))
SPELLING += (("naev", "nev"), ("centre", "center"), ("tesselat", "tessellat"))


def fold_word(word: str) -> str:
    """One spelling per word, so dictionary and report need not agree on British/US or number."""
    for old, new in SPELLING:
        word = word.replace(old, new)
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def cdr_phrase(match: re.Match[str]) -> str:
    """A ratio as the words for its cup: "large cup to disc ratio" is a dictionary alias of
    optic disc cupping and "small cup" a normal remark, so the usual rules take it from there.
    Decimal, so a ratio on a band edge compares as written rather than as a binary float."""
    value = Decimal(match.group(1))
    if value >= LARGE_CDR:
        return f"large cup to disc ratio {match.group(1)}"
    if value < NORMAL_CDR_BELOW:
        return f"small cup to disc ratio {match.group(1)}"
    return match.group(0)


def prepare_text(text: str) -> str:
    text = TITLE_RE.sub("doctor", text).lower().replace("can't", "cannot").replace("n't", " not")
    text = CDR_RE.sub(cdr_phrase, text)
    return PREFIX_RE.sub(r"\1 ", re.sub(r"'s\b|'", "", text))


def report_words(text: str) -> tuple[str, ...]:
    return tuple(fold_word(w) for w in WORD_RE.findall(prepare_text(text)))

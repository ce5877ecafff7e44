"""The normalised category key (docs/objectives.md §2): one class however a dataset spells it.

"Age-related macular degeneration." and "age related  macular degeneration" share one key, so
FLAIR targets, dictionary look-ups and zero-shot classes agree across datasets.
"""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s.,;:!?]+$")


def category_key(text: str) -> str:
    """Lower case, hyphen = space, spaces collapsed, trailing punctuation dropped."""
    text = text.lower().replace("-", " ")
    return _TRAILING.sub("", _SPACES.sub(" ", text).strip())

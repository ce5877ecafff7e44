"""Text builders: turn a record into the text its image is paired with, and the category behind it.

The category travels with the batch because category-aware objectives (FLAIR) build their targets
from it, never from the words drawn into the text.
"""

from __future__ import annotations

import random
import re

from fundus_lit.data.records import FundusRecord

_SPACES = re.compile(r"\s+")


def collapse_spaces(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


class TextBuilder:
    """Base class; subclasses decide what text an image is paired with."""

    def build(self, record: FundusRecord, rng: random.Random) -> tuple[str, str]:
        """Return ``(text, category)``; ``rng`` is seeded per sample and epoch by the dataset."""
        raise NotImplementedError


class TemplateTextBuilder(TextBuilder):
    """The plain prompt ``"A [ATR] fundus photograph of [CLS]"``.

    One category is drawn uniformly from the record's categories and one attribute from its
    attributes, per sample per epoch; an empty list gives an empty slot.

    Args:
        template: Prompt with ``[ATR]`` and ``[CLS]`` placeholders.
    """

    def __init__(self, template: str = "A [ATR] fundus photograph of [CLS]") -> None:
        if "[CLS]" not in template:
            raise ValueError(f"template {template!r} has no [CLS] placeholder")
        self.template = template

    def describe(self, category: str, record: FundusRecord, rng: random.Random) -> str:
        """What fills [CLS]; knowledge-prompt builders substitute a description here."""
        return category

    def build(self, record: FundusRecord, rng: random.Random) -> tuple[str, str]:
        category = rng.choice(record.categories) if record.categories else ""
        attribute = rng.choice(record.attributes) if record.attributes else ""
        text = self.template.replace("[ATR]", attribute)
        text = text.replace("[CLS]", self.describe(category, record, rng))
        return collapse_spaces(text), category

"""Text builders: turn a record into the text its image is paired with, and the category behind it.

The category travels with the batch because category-aware objectives (FLAIR) build their targets
from it, never from the words drawn into the text.
"""

from __future__ import annotations

import logging
import random
import re

from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.knowledge.keys import category_key

logger = logging.getLogger(__name__)

_SPACES = re.compile(r"\s+")


def collapse_spaces(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


class NoTextError(DataError):
    """A record has no usable text (its report or caption is empty or whitespace only) and the
    builder has no fallback; the dataset hands it to the bad-input policy
    (:mod:`fundus_lit.data.bad_input`)."""


class TextBuilder:
    """Base class; subclasses decide what text an image is paired with."""

    def build(self, record: FundusRecord, rng: random.Random) -> tuple[str, str]:
        """Return ``(text, category)``; ``rng`` is seeded per sample and epoch by the dataset."""
        raise NotImplementedError

    def keep(self, record: FundusRecord) -> bool:
        """Whether the record may be used for pretraining (held-out categories say no)."""
        return True

    def refuses(self, record: FundusRecord) -> bool:
        """Whether :meth:`build` raises :class:`NoTextError` for this record, known before any
        image is read, so a run under ``bad_input=error`` can stop before training."""
        return False


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


class KnowledgePromptBuilder(TemplateTextBuilder):
    """FLAIR's knowledge prompts: [CLS] is drawn uniformly from the category's name and its
    descriptions in the domain-knowledge dictionary, so the text teaches what the image shows.

    The loss still uses the category, never the description drawn.

    Args:
        template: Prompt with ``[ATR]`` and ``[CLS]`` placeholders.
        knowledge: Extra knowledge YAML files, applied over the built-in dictionary (a category
            of the same name replaces the built-in one).
        use_knowledge: False gives the "naive" ablation: [CLS] is always the category name.
        free_text_datasets: Datasets whose categories are already free text (keyword lists,
            captions): their categories are used as they are.
        held_out: Categories whose samples are dropped from pretraining, so that evaluation on
            them measures unseen-category transfer.
    """

    def __init__(
        self,
        template: str = "A [ATR] fundus photograph of [CLS]",
        knowledge: list[str] | None = None,
        use_knowledge: bool = True,
        free_text_datasets: list[str] | None = None,
        held_out: list[str] | None = None,
    ) -> None:
        super().__init__(template)
        from fundus_lit.knowledge import KnowledgeBase

        self.knowledge = KnowledgeBase.load(knowledge or [])
        self.use_knowledge = use_knowledge
        self.free_text = set(free_text_datasets or [])
        self.held_out = {category_key(c) for c in held_out or []}
        self._unknown: set[str] = set()

    def keep(self, record: FundusRecord) -> bool:
        return not any(category_key(c) in self.held_out for c in record.categories)

    def describe(self, category: str, record: FundusRecord, rng: random.Random) -> str:
        if not category or not self.use_knowledge or record.dataset in self.free_text:
            return category
        entry = self.knowledge.get(category)
        if entry is None:
            key = category_key(category)
            if key not in self._unknown:  # once per category (and worker), not per sample
                self._unknown.add(key)
                logger.warning(
                    "category %r (dataset %s) is not in the knowledge dictionary; "
                    "its prompts use the name alone",
                    category,
                    record.dataset,
                )
            return category
        return rng.choice((category, *entry.descriptions))


class ReportTextBuilder(TextBuilder):
    """The record's own free text (a report or a caption), for report-supervised recipes.

    Records of formats that carry no text (``text`` None: FLAIR CSVs, image folders) fall back
    to ``fallback`` (the plain template prompt), so report data can be mixed with category-only
    datasets; ``require_text`` makes them an error instead. A record whose format carries a
    report or caption that is empty or whitespace only (``text`` ``""``) is always refused: a
    template prompt in place of its report would train the image on words nobody wrote for it.
    The category returned (for category-aware objectives stacked on top) is drawn from the
    record's categories like the template builders do.

    Args:
        fallback: Builder for records without text.
        require_text: Refuse records without text.
    """

    def __init__(self, fallback: TextBuilder | None = None, require_text: bool = False) -> None:
        self.fallback = fallback or TemplateTextBuilder()
        self.require_text = require_text

    def refuses(self, record: FundusRecord) -> bool:
        if record.text is None:
            return self.require_text
        return not record.text.strip()

    def build(self, record: FundusRecord, rng: random.Random) -> tuple[str, str]:
        if record.text and record.text.strip():
            category = rng.choice(record.categories) if record.categories else ""
            return collapse_spaces(record.text), category
        if self.refuses(record):
            raise NoTextError(
                f"record {record.image} ({record.origin}) has no report or caption text "
                "(empty or whitespace only)"
            )
        return self.fallback.build(record, rng)

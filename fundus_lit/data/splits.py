"""The splits of a data module: records read from their sources, a held-out validation split
when none is given, and the training records a recipe may train on.

Each record travels with its source (the source opens its image), as ``(source, record)`` items.
"""

from __future__ import annotations

import logging

from fundus_lit.core.errors import DataError
from fundus_lit.data.bad_input import MissingFiles
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.samplers import permutation
from fundus_lit.data.sources import Source
from fundus_lit.data.text import TextBuilder
from fundus_lit.knowledge.keys import category_key

Items = list[tuple[Source, FundusRecord]]
logger = logging.getLogger(__name__)


def load_items(sources: list[Source], split: str, missing: MissingFiles | None) -> Items:
    """Every record of ``sources``; with ``missing`` (``check_files``), the records whose files
    are absent are noted there and left out: :meth:`MissingFiles.resolve` raises or warns once
    every split is read, so one message lists them all."""
    items: Items = []
    for source in sources:
        records = source.load()
        if missing is not None:
            gone = source.find_missing(records)
            missing.add(split, source, len(records), gone)
            absent = {id(record) for record, _ in gone}
            records = [record for record in records if id(record) not in absent]
        items.extend((source, record) for record in records)
    return items


def hold_out_val(train: Items, fraction: float, seed: int) -> tuple[Items, Items]:
    """(train, val): ``fraction`` of the records, drawn by a seeded permutation, become the
    validation split; the rest keep their order, so the split never depends on loading order
    beyond the sources' own."""
    order = permutation(len(train), seed)
    n_val = int(round(len(train) * fraction))
    return [train[i] for i in sorted(order[n_val:])], [train[i] for i in order[:n_val]]


def training_records(train: Items, text: TextBuilder, held_out: set[str]) -> Items:
    """The records training may use: those the text builder keeps and of no held-out category
    (``held_out`` holds category keys); held-out categories stay in validation and test."""
    kept = [
        item
        for item in train
        if text.keep(item[1]) and not any(category_key(c) in held_out for c in item[1].categories)
    ]
    if len(kept) < len(train):
        logger.info("dropped %d training records of held-out categories", len(train) - len(kept))
    if train and not kept:
        raise DataError("every training record belongs to a held-out category")
    return kept

"""The report CSV reader: images with free-text reports, labelled as given or by the extractor.

Layout (README, "Data formats"): ``image,report[,labels]``; ``labels`` is a Python-literal
list of label names. Other columns, an unnamed pandas index included, are ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from fundus_lit.core.errors import DataError
from fundus_lit.data.labels import LabelExtractor, multi_hot
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources.base import parse_list_cell
from fundus_lit.data.sources.csv_layouts import CSVSource
from fundus_lit.knowledge import KnowledgeBase

logger = logging.getLogger(__name__)

_EXAMPLES = 3


class ReportCSVSource(CSVSource):
    """Report data (ViLReF-style): one report per image, and a multi-hot label vector per record.

    A non-empty ``labels`` cell is used as written; otherwise the labels come from the
    rule-based :class:`~fundus_lit.data.labels.LabelExtractor`. The record's categories are its
    labels by name, so category-based code (zero-shot, FLAIR targets, case retrieval) works on
    report data too. Reports that give no label are kept (as all-zero vectors) and counted in one
    warning per load, with examples, so a poor fit of the dictionary shows up before training.

    Args:
        csv: Path of the CSV file.
        root: Data root the ``image`` paths are relative to; defaults to the CSV's folder. The
            first component of each image path is the dataset name.
        labels: Label vocabulary (dictionary names or aliases), in vector order; all categories
            of the knowledge dictionary if None.
        knowledge: Extra knowledge YAML files over the built-in dictionary.
        uncertain: Whether uncertain findings of extracted reports count as positive labels.
    """

    def __init__(
        self,
        csv: str,
        root: str | None = None,
        labels: list[str] | None = None,
        knowledge: list[str] | None = None,
        uncertain: Literal["positive", "negative"] = "positive",
    ) -> None:
        super().__init__(csv, root)
        self.labels = labels
        self.knowledge = knowledge
        self.uncertain = uncertain

    def load(self) -> list[FundusRecord]:
        self.require_files()  # before the extractor: a missing file is the first thing to report
        try:
            extractor = LabelExtractor(self.labels, self.knowledge, self.uncertain)
        except ValueError as err:  # unknown label name or bad knowledge file: a config error
            raise DataError(f"labels of {self.csv}: {err}") from err
        records: list[FundusRecord] = []
        # (report, where) of reports that are empty or give no label
        unlabelled: list[tuple[str, str]] = []
        dropped: dict[str, int] = {}
        for row, where, image in self.rows(["image", "report"]):
            record = self._record(row, where, image, extractor, dropped)
            records.append(record)
            if not record.text or not record.categories:
                unlabelled.append((record.text or "", where))
        self._log(len(records), unlabelled, dropped)
        return records

    def _record(
        self,
        row: dict[str, str],
        where: str,
        image: str,
        extractor: LabelExtractor,
        dropped: dict[str, int],
    ) -> FundusRecord:
        raw = row.get("report") or ""
        report = " ".join(raw.split())  # line breaks end sentences: the extractor gets `raw`
        cell = (row.get("labels") or "").strip()
        if cell:
            cell_names = parse_list_cell(cell, f"{where}, column 'labels'")
            names = _canonical(cell_names, extractor.knowledge, where)
            names, outside = _split(names, extractor.vocabulary)
            for name in outside:
                dropped[name] = dropped.get(name, 0) + 1
        else:
            vector = extractor.vector(extractor.extract(raw))
            names = [n for n, v in zip(extractor.vocabulary, vector) if v]
        parts = Path(image).parts
        return FundusRecord(
            image=image,
            dataset=parts[0] if len(parts) > 1 else self.csv.stem,
            categories=tuple(names),
            text=report,  # "" when empty: bad input, see ReportTextBuilder
            labels=multi_hot(names, extractor.vocabulary),
            origin=where,
        )

    def _log(self, total: int, unlabelled: list[tuple[str, str]], dropped: dict[str, int]) -> None:
        if dropped:
            logger.warning(
                "%s: labels outside the label vocabulary were dropped: %s",
                self.csv,
                ", ".join(f"{name} ({n}x)" for name, n in sorted(dropped.items())),
            )
        empty = [where for text, where in unlabelled if not text.strip()]
        silent = [(text, where) for text, where in unlabelled if text.strip()]
        if empty:
            logger.warning(
                "%s: %d of %d reports are empty or whitespace only (%s); they are bad input: "
                "data.bad_input=error stops the run, skip leaves them out",
                self.csv,
                len(empty),
                total,
                _lines(empty),
            )
        if silent:
            examples = "; ".join(
                f"{text[:80]!r} ({where.rsplit(', ', 1)[-1]})" for text, where in silent[:_EXAMPLES]
            )
            logger.warning(
                "%s: %d of %d reports name no finding of the label vocabulary; they are kept "
                "with an all-zero label vector; e.g. %s",
                self.csv,
                len(silent),
                total,
                examples,
            )
        if not unlabelled:
            logger.info("%s: %d reports, every one with at least one label", self.csv, total)


def _lines(wheres: list[str]) -> str:
    """``line 3, line 7, ... and N more`` from ``"file, line N"`` origins."""
    lines = [where.rsplit(", ", 1)[-1] for where in wheres]
    more = f" and {len(lines) - _EXAMPLES * 2} more" if len(lines) > _EXAMPLES * 2 else ""
    return ", ".join(lines[: _EXAMPLES * 2]) + more


def _canonical(names: tuple[str, ...], kb: KnowledgeBase, where: str) -> list[str]:
    """Canonical names of a labels cell, in the order written (the first is the class of
    single-label evaluations)."""
    out: list[str] = []
    for name in names:
        cat = kb.get(name)
        if cat is None:
            raise DataError(
                f"{where}, column 'labels': unknown label {name!r} "
                "(not a category or alias of the knowledge dictionary)"
            )
        if cat.name not in out:
            out.append(cat.name)
    return out


def _split(names: list[str], vocabulary: list[str]) -> tuple[list[str], list[str]]:
    """(names in the vocabulary, names outside it): a restricted vocabulary keeps its columns."""
    inside = set(vocabulary)
    return [n for n in names if n in inside], [n for n in names if n not in inside]

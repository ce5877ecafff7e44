"""Image-caption CSVs in the MM-Retinal layout: one free-text caption per fundus photograph.

Caption datasets describe what an image shows in prose instead of naming categories, so their
records carry ``text`` and no ``categories``: inventing labels from prose would silently mix
guessed labels into category-supervised objectives.
"""

from __future__ import annotations

from pathlib import Path

from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources.base import parse_list_cell
from fundus_lit.data.sources.csv_layouts import CSVSource

__all__ = ["CaptionCSVSource", "caption_from_cell"]

_SHOWN = 10  # rows listed in one error message; the rest are counted


def caption_from_cell(cell: str, where: str) -> str:
    """Caption text of one cell: a Python-literal list of sentences (as the ``categories``
    column of some exports holds them) is joined with ". ", anything else is taken as written.

    Sentences keep their own final full stop only at the end, so the join never doubles one.
    """
    text = (cell or "").strip()
    if not text.startswith("["):
        return text
    parts = [p for p in parse_list_cell(text, where) if p]
    return ". ".join([p.rstrip(". ") for p in parts[:-1]] + parts[-1:])


class CaptionCSVSource(CSVSource):
    """The MM-Retinal caption layout: a CSV ``image,caption`` with image paths relative to
    ``root``. Extra columns are ignored and a pandas index column (empty header) is tolerated.

    Some exports keep the caption in a ``categories`` column instead, as a list of sentences
    (joined with ". ") or a plain string. That column is used when ``caption_column`` says so,
    or automatically when the CSV has no ``caption`` column but has ``categories``; the name
    notwithstanding, its content is caption text, never category labels.

    Args:
        csv: Path of the CSV file.
        root: Data root the ``image`` paths are relative to; defaults to the CSV's folder. The
            first component of each image path is the dataset name.
        caption_column: Column holding the caption.
    """

    def __init__(self, csv: str, root: str | None = None, caption_column: str = "caption") -> None:
        super().__init__(csv, root)
        self.caption_column = caption_column

    def __repr__(self) -> str:
        return (
            f"CaptionCSVSource(csv={str(self.csv)!r}, root={str(self.root)!r}, "
            f"caption_column={self.caption_column!r})"
        )

    def _required(self) -> list[str | tuple[str, ...]]:
        """Columns to read; autodetection (``categories`` when there is no ``caption``) only
        replaces the default, so an explicitly named column that is missing stays an error."""
        if self.caption_column == "caption":
            return ["image", ("categories", "caption")]
        return ["image", self.caption_column]

    def load(self) -> list[FundusRecord]:
        records, empty = [], []
        for row, where, image in self.rows(self._required()):
            column = self.caption_column
            if column == "caption" and "caption" not in row:
                column = "categories"
            record = FundusRecord(
                image=image,
                dataset=Path(image).parts[0],
                text=caption_from_cell(row.get(column) or "", f"{where}, column '{column}'"),
                origin=where,
            )
            (records if record.text else empty).append(record)
        if empty:
            raise DataError(_empty_message(self.csv, column, empty))
        return records


def _empty_message(path: Path, column: str, empty: list[FundusRecord]) -> str:
    """All empty captions in one message, so a user fixes the file in one pass, not row by row."""
    shown = "\n".join(f"  {r.origin} ({r.image})" for r in empty[:_SHOWN])
    more = f"\n  ... and {len(empty) - _SHOWN} more" if len(empty) > _SHOWN else ""
    return f"{path}: {len(empty)} row(s) with an empty caption in column '{column}':\n{shown}{more}"

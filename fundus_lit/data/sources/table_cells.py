"""The cells of table-backed sources (Hugging Face datasets, the prepared cache): encoded image
bytes, category columns given as names or ``ClassLabel`` ids, and the row a record came from.

Both readers keep images as encoded bytes in Arrow tables and decode them per row in the loader
workers; decoding and cell parsing live here so their errors name the dataset, shard and row the
same way whichever reader hit them.
"""

from __future__ import annotations

import io
import re
from typing import Any

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources.base import draft, parse_list_cell

ROW = re.compile(r", row (\d+)\b")


def decode_image(
    blob: bytes, where: str, mode: str = "RGB", target: int | None = None
) -> Image.Image:
    """Decode encoded image bytes; ``target`` drafts JPEGs as :func:`read_rgb` does files. A
    broken blob is a :class:`DataError` naming ``where`` (dataset, shard and row)."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            if target and mode == "RGB":
                draft(img, target)
            return img.convert(mode)
    except (OSError, SyntaxError) as err:
        raise DataError(f"cannot decode the image of {where}: {err}") from err


def row_of(record: FundusRecord, pattern: re.Pattern[str] = ROW) -> int | None:
    """The row a record of a table-backed source came from, as its origin states it; None for a
    record made elsewhere (the caller then looks it up by value)."""
    match = pattern.search(record.origin)
    return int(match.group(1)) if match else None


def class_label(feature: Any) -> Any:
    """The ``ClassLabel`` of a category column (plain, or inside a list), if it has one."""
    import datasets

    if isinstance(feature, (datasets.Sequence, datasets.List)):
        feature = feature.feature
    return feature if isinstance(feature, datasets.ClassLabel) else None


def category_cell(value: Any, names: Any, where: str) -> tuple[str, ...]:
    """Categories of one cell: a list of strings or class ids, or one string or class id;
    ``names`` is the column's ``ClassLabel`` (class ids become its names)."""

    def one(item: Any) -> str:
        if names is not None and isinstance(item, int):
            return names.int2str(item)
        return str(item).strip()

    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return parse_list_cell(text, where)
        return (text,) if text else ()
    if isinstance(value, (list, tuple)):
        return tuple(c for c in (one(v) for v in value if v is not None) if c)
    return (one(value),)

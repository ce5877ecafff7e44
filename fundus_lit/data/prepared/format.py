"""The on-disk format of a prepared folder, shared by its writer and its reader: names, the
record fields stored, the Arrow schema, checksums and memory-mapped shard reading.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fundus_lit.core.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT = "fundus-lit-prepared/1"
MANIFEST = "manifest.json"
#: record fields stored as columns, in FundusRecord order
FIELDS = ("image", "dataset", "categories", "attributes", "text", "labels", "mask")
SHARD_ORIGIN = re.compile(r"shard-(\d+)\.arrow, row (\d+)\b")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def features() -> Any:
    import datasets

    text = datasets.Value("string")
    return datasets.Features(
        {
            "image": text,
            "dataset": text,
            "categories": datasets.List(text),
            "attributes": datasets.List(text),
            "text": text,
            "labels": datasets.List(datasets.Value("float64")),  # float64: values round-trip
            "mask": text,
            "origin": text,  # the raw source's origin, for messages
            "pixels": datasets.Image(),  # the prepared JPEG
            "mask_pixels": datasets.Image(),  # the prepared mask as PNG, or null
        }
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def open_table(path: Path) -> pa.Table:
    """A shard's Arrow table, memory-mapped through HF datasets."""
    import datasets

    try:
        return datasets.Dataset.from_file(str(path)).data.table
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"cannot read prepared shard {path}: {err}") from err

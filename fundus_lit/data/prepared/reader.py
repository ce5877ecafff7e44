"""Reading a prepared folder: :class:`PreparedSource`, records from the metadata columns and images
from the stored JPEGs by memory-mapped random access."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.data.prepared.format import (
    FIELDS,
    FORMAT,
    MANIFEST,
    SHARD_ORIGIN,
    open_table,
    sha256_file,
    shard_name,
)
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources import Source
from fundus_lit.data.sources.table_cells import decode_image

if TYPE_CHECKING:
    import pyarrow as pa


class PreparedSource(Source):
    """A folder written by :func:`prepare` (``fundus-lit prepare``): records from the metadata
    columns, images decoded from the stored JPEGs by memory-mapped random access.

    The records equal those of the raw sources, so splits, text and sampling do not change; the
    images are already cropped to the field of view and at most ``size`` px, so train with
    ``data.image_size`` up to the prepared size and the same ``crop_fov`` (the pipeline's crop
    finds the cropped frame again). Each loader worker maps the shards itself on first use.

    Args:
        path: The prepared folder.
        verify: Check every shard's sha256 against the manifest in :meth:`check` (reads all
            shards once; sizes are always compared).
    """

    draft_decode: ClassVar[bool] = True

    def __init__(self, path: str, verify: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.verify = verify
        self._manifest: dict[str, Any] | None = None
        self._tables: dict[int, pa.Table] = {}
        self._index: dict[FundusRecord, tuple[int, int]] | None = None

    def __repr__(self) -> str:
        return f"PreparedSource(path={str(self.path)!r})"

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_tables": {}, "_index": None}

    @property
    def manifest(self) -> dict[str, Any]:
        """The folder's manifest; an unfinished or foreign folder is an error saying what to do."""
        if self._manifest is None:
            path = self.path / MANIFEST
            if not path.is_file():
                what = "does not exist" if not self.path.exists() else f"has no {MANIFEST}"
                raise DataError(
                    f"prepared folder {self.path} {what}; write it with fundus-lit prepare"
                )
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise DataError(f"cannot read {path}: {err}") from err
            if manifest.get("format") != FORMAT:
                raise DataError(f"{path} is not a fundus-lit prepare manifest ({FORMAT})")
            if not manifest.get("complete"):
                raise DataError(
                    f"{self.path} is an unfinished preparation ({len(manifest['shards'])} of "
                    f"{math.ceil(manifest['total'] / manifest['arguments']['shard_size'])} "
                    "shards); re-run fundus-lit prepare with the same arguments to finish it"
                )
            self._manifest = manifest
        return self._manifest

    @property
    def size(self) -> int:
        """Longer side of the stored images."""
        return int(self.manifest["arguments"]["size"])

    @property
    def fov_cropped(self) -> bool:
        return bool(self.manifest["fov_cropped"])

    def _table(self, shard: int) -> pa.Table:
        if shard not in self._tables:
            entries = self.manifest["shards"]
            if not 0 <= shard < len(entries):
                raise DataError(f"{self.path} has no shard {shard} ({len(entries)} shards)")
            path = self.path / entries[shard]["file"]
            if not path.is_file():
                raise DataError(
                    f"prepared shard {path} is missing (listed in {self.path / MANIFEST})"
                )
            self._tables[shard] = open_table(path)
        return self._tables[shard]

    def load(self) -> list[FundusRecord]:
        records = []
        for k, entry in enumerate(self.manifest["shards"]):
            table = self._table(k)
            if table.num_rows != entry["records"]:
                raise DataError(
                    f"prepared shard {self.path / entry['file']} has {table.num_rows} rows, the "
                    f"manifest says {entry['records']}"
                )
            rows = table.select([*FIELDS, "origin"]).to_pylist()
            for row, values in enumerate(rows):
                labels = values["labels"]
                records.append(
                    FundusRecord(
                        image=values["image"],
                        dataset=values["dataset"],
                        categories=tuple(values["categories"]),
                        attributes=tuple(values["attributes"]),
                        text=values["text"],
                        labels=tuple(labels) if labels is not None else None,
                        origin=f"{self.path / entry['file']}, row {row} "
                        f"(prepared from {values['origin']})",
                        mask=values["mask"],
                    )
                )
        return records

    def check(self, records: list[FundusRecord]) -> None:
        """Every shard the manifest lists is there with its size (and, with ``verify``, its
        sha256): a shard truncated by a copy fails here, not as a decode error mid-epoch."""
        for entry in self.manifest["shards"]:
            path = self.path / entry["file"]
            if not path.is_file():
                raise DataError(
                    f"prepared shard {path} is missing (listed in {self.path / MANIFEST})"
                )
            if path.stat().st_size != entry["bytes"]:
                raise DataError(
                    f"prepared shard {path} is {path.stat().st_size} bytes, the manifest says "
                    f"{entry['bytes']}: the file is damaged; prepare again or copy it again"
                )
            if self.verify and sha256_file(path) != entry["sha256"]:
                raise DataError(
                    f"prepared shard {path} does not match its sha256 in the manifest: the file "
                    "is damaged; prepare again or copy it again"
                )

    def _locate(self, record: FundusRecord) -> tuple[int, int]:
        match = SHARD_ORIGIN.search(record.origin)
        if match:
            return int(match.group(1)), int(match.group(2))
        if self._index is None:  # a record made elsewhere (e.g. by the raw source): by value
            self._index = {}
            for r in self.load():
                self._index.setdefault(r, self._locate(r))
        if record not in self._index:
            raise DataError(f"{record.image} ({record.origin}) is not a record of {self.path}")
        return self._index[record]

    def _cell(self, record: FundusRecord, column: str) -> tuple[bytes | None, str]:
        shard, row = self._locate(record)
        table = self._table(shard)
        where = f"{self.path / shard_name(shard)}, row {row}"
        if row >= table.num_rows:
            raise DataError(f"{where} does not exist ({table.num_rows} rows)")
        cell = table.column(column)[row]
        return (cell["bytes"].as_py() if cell.is_valid else None), where

    def open_image(self, record: FundusRecord, target: int | None = None) -> Image.Image:
        blob, where = self._cell(record, "pixels")
        if blob is None:
            raise DataError(f"{where}: no image bytes")
        return decode_image(blob, where, target=target)

    def open_mask(self, record: FundusRecord) -> Image.Image:
        if record.mask is None:
            return super().open_mask(record)
        blob, where = self._cell(record, "mask_pixels")
        if blob is None:
            raise DataError(f"{where}: no mask bytes")
        return decode_image(blob, where, mode="L")

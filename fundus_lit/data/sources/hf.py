"""Hugging Face ``datasets`` as a source: a local ``save_to_disk`` folder, parquet, or a hub id.

HF datasets name their columns as their authors chose, so the reader maps named columns onto the
record fields instead of guessing. Images are read by row from the memory-mapped Arrow data, and
each loader worker opens the dataset itself: an open dataset is never pickled into a worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import hub_offline
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources.base import Source
from fundus_lit.data.sources.table_cells import category_cell, class_label, decode_image, row_of

if TYPE_CHECKING:
    import datasets

__all__ = ["HFDatasetSource"]

HUB_OFFLINE_HINT = (
    "If this machine cannot reach the Hugging Face hub, pass a local path instead: a folder "
    "written by Dataset.save_to_disk, or a parquet file or folder of parquet files."
)


class HFDatasetSource(Source):
    """Images and labels from a Hugging Face dataset, mapped onto the record by column names.

    ``path`` is tried as a local path first: a ``save_to_disk`` folder (a Dataset, or a
    DatasetDict whose ``split`` is taken), a parquet file, or a folder of parquet (or other data)
    files laid out as on the hub. Anything else is a hub id, loaded only where the hub is
    reachable; with ``HF_HUB_OFFLINE=1`` it is an error asking for a local path.

    Args:
        path: Local folder or file, or a hub id (``org/name``).
        split: Split to read (ignored for a single parquet file or a saved Dataset).
        image: Image column: an HF ``Image`` feature (bytes and/or a path), raw bytes, or a path
            string (relative paths are relative to the dataset's folder).
        text: Column of free text (report or caption) that goes with the image.
        categories: Category column: a list of strings, one string (a Python-literal list
            string such as ``"['a', 'b']"`` is parsed), or a ``ClassLabel`` (its names are used).
        dataset: Column holding each row's dataset name; by default every record gets the
            dataset's own name (the folder, file stem or hub name).
        labels: Column of a multi-hot (or soft) label vector.
        revision: Hub revision (branch, tag or commit) of a hub id.
    """

    draft_decode: ClassVar[bool] = True

    def __init__(
        self,
        path: str,
        split: str = "train",
        image: str = "image",
        text: str | None = None,
        categories: str | None = None,
        dataset: str | None = None,
        labels: str | None = None,
        revision: str | None = None,
    ) -> None:
        self.path, self.split, self.revision = path, split, revision
        self.image, self.text, self.categories = image, text, categories
        self.dataset, self.labels = dataset, labels
        self._data: datasets.Dataset | None = None
        self._index: dict[FundusRecord, int] | None = None

    def __repr__(self) -> str:
        return f"HFDatasetSource(path={self.path!r}, split={self.split!r})"

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_data": None, "_index": None}

    @property
    def local(self) -> Path | None:
        """The local file or folder ``path`` names, if it exists."""
        path = Path(self.path).expanduser()
        return path if path.exists() else None

    @property
    def name(self) -> str:
        """Default dataset name of the records."""
        local = self.local
        if local is not None:
            return local.stem if local.is_file() else local.resolve().name
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def where(self) -> str:
        return f"HF dataset {self.path} [{self.split}]"

    def data(self) -> datasets.Dataset:
        """The dataset, opened once per process (memory-mapped) with images left encoded."""
        if self._data is None:
            import datasets

            data = self._open(datasets)
            column = data.features.get(self.image)
            if isinstance(column, datasets.Image) and column.decode:
                data = data.cast_column(self.image, datasets.Image(decode=False))
            self._data = data
        return self._data

    def _open(self, datasets: Any) -> datasets.Dataset:
        local = self.local
        try:
            if local is None:
                if self.path.startswith(("/", ".", "~")) or self.path.count("/") > 1:
                    raise DataError(f"HF dataset path {self.path} does not exist")
                if hub_offline():
                    raise DataError(
                        f"HF dataset {self.path!r} is not a local path, and the hub is offline "
                        f"(HF_HUB_OFFLINE=1). {HUB_OFFLINE_HINT}"
                    )
                found = datasets.load_dataset(self.path, split=self.split, revision=self.revision)
            elif local.is_file() and local.suffix == ".parquet":
                found = datasets.Dataset.from_parquet(str(local))
            elif (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
                found = datasets.load_from_disk(str(local))
            elif local.is_dir():
                found = datasets.load_dataset(str(local), split=self.split)
            else:
                raise DataError(
                    f"{local} is neither a parquet file nor a dataset folder (save_to_disk or "
                    "parquet files)"
                )
        except (ValueError, FileNotFoundError) as err:  # unknown split, no data files, ...
            if isinstance(err, DataError):
                raise
            raise DataError(f"cannot open {self.where}: {err}") from err
        if isinstance(found, datasets.DatasetDict):
            if self.split not in found:
                raise DataError(
                    f"{self.where}: no split {self.split!r}; splits are {sorted(found)}"
                )
            found = found[self.split]
        if found._indices is not None:  # rows must be table rows for random access
            found = found.flatten_indices()
        return found

    def _require(self, data: datasets.Dataset) -> None:
        wanted = {
            "image": self.image,
            "text": self.text,
            "categories": self.categories,
            "dataset": self.dataset,
            "labels": self.labels,
        }
        for arg, column in wanted.items():
            if column is not None and column not in data.column_names:
                raise DataError(
                    f"{self.where}: no column {column!r} (the {arg!r} argument); columns are "
                    f"{sorted(data.column_names)}"
                )

    def load(self) -> list[FundusRecord]:
        data = self.data()
        self._require(data)
        table = data.data.table
        references = self._references(table, data.features[self.image], len(data))
        cells = {  # record field -> the column's values; only metadata columns are read
            field: table.column(column).to_pylist()
            for field, column in (
                ("text", self.text),
                ("categories", self.categories),
                ("dataset", self.dataset),
                ("labels", self.labels),
            )
            if column is not None
        }
        names = class_label(data.features.get(self.categories)) if self.categories else None
        records = []
        for row, reference in enumerate(references):
            where = f"{self.where}, row {row}"
            categories: tuple[str, ...] = ()
            if "categories" in cells:
                categories = category_cell(cells["categories"][row], names, where)
            labels = cells["labels"][row] if "labels" in cells else None
            if labels is not None and not isinstance(labels, (list, tuple)):
                raise DataError(f"{where}, column {self.labels!r}: expected a list, got {labels!r}")
            dataset = cells["dataset"][row] if "dataset" in cells else None
            text = cells["text"][row] if "text" in cells else None
            records.append(
                FundusRecord(
                    image=reference,
                    dataset=str(dataset) if dataset not in (None, "") else self.name,
                    categories=categories,
                    text=str(text) if text not in (None, "") else None,
                    labels=tuple(float(v) for v in labels) if labels is not None else None,
                    origin=where,
                )
            )
        return records

    def _references(self, table: Any, feature: Any, n: int) -> list[str]:
        """The ``image`` field of each record: the image's own path where the dataset keeps one
        (so case search shows a file name), else ``<split>/<row>``. Pixels are not read."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = table.column(self.image)
        if pa.types.is_struct(column.type):
            paths = pc.struct_field(column, "path").to_pylist()
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            paths = column.to_pylist()
            empty = [row for row, p in enumerate(paths) if not p]
            if empty:
                raise DataError(
                    f"{self.where}, row {empty[0]}, column {self.image!r}: empty image path "
                    f"({len(empty)} row(s) in all)"
                )
        elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            paths = [None] * n
        else:
            raise DataError(
                f"{self.where}, column {self.image!r}: expected images (an Image feature, bytes or "
                f"path strings), got {feature}"
            )
        return [p or f"{self.split}/{row}" for row, p in enumerate(paths)]

    def check(self, records: list[FundusRecord]) -> None:
        """Path-string images must exist; encoded images are inside the dataset."""
        import pyarrow as pa

        column = self.data().data.table.column(self.image)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            return
        missing = [
            f"  {self._file(r.image)} ({r.origin})"
            for r in records
            if not self._file(r.image).is_file()
        ]
        if missing:
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(
                f"{len(missing)} of {len(records)} images listed in {self.where} are missing:\n"
                + "\n".join(missing[:10])
                + more
            )

    def _file(self, reference: str) -> Path:
        path = Path(reference).expanduser()
        local = self.local
        if path.is_absolute() or local is None:
            return path
        return (local.parent if local.is_file() else local) / path

    def _row(self, record: FundusRecord) -> int:
        row = row_of(record)
        if row is None:  # a record made elsewhere: find it by value
            if self._index is None:
                self._index = {}
                for i, r in enumerate(self.load()):
                    self._index.setdefault(r, i)
            if record not in self._index:
                raise DataError(f"{record.image} ({record.origin}) is not a record of {self.where}")
            row = self._index[record]
        return row

    def open_image(self, record: FundusRecord, target: int | None = None) -> Image.Image:
        row = self._row(record)
        data = self.data()
        if row >= len(data):
            raise DataError(f"{record.origin}: row {row} is past the end of {self.where}")
        cell = data.data.table.column(self.image)[row].as_py()
        where = f"{self.where}, row {row}"
        if isinstance(cell, dict):  # an Image feature: bytes, else a path
            if cell.get("bytes"):
                return decode_image(cell["bytes"], where, target=target)
            cell = cell.get("path")
        if isinstance(cell, bytes):
            return decode_image(cell, where, target=target)
        if not cell:
            raise DataError(f"{where}, column {self.image!r}: no image (neither bytes nor a path)")
        path = self._file(cell)
        try:
            return decode_image(path.read_bytes(), f"{where} ({path})", target=target)
        except OSError as err:
            raise DataError(f"cannot read image {path} ({where}): {err}") from err

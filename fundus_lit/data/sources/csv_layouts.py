"""CSV layouts: the shared reading path (:class:`CSVSource`), FLAIR/KeepFIT CSVs and
image-mask CSVs. (Caption and report CSVs live in captions.py and reports.py.)"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources.base import Source, parse_list_cell, read_rgb


class CSVSource(Source):
    """Base of the CSV layouts: paths relative to a data root (default: the CSV's folder).

    What every CSV reader needs lives here once: the file and root must exist, every listed
    file must exist before training starts (reported with its row), images decode to RGB.

    Args:
        csv: Path of the CSV file.
        root: Data root the paths are relative to; defaults to the CSV's folder.
    """

    #: record fields holding paths that :meth:`check` verifies
    path_fields: ClassVar[tuple[str, ...]] = ("image",)
    draft_decode: ClassVar[bool] = True

    def __init__(self, csv: str, root: str | None = None) -> None:
        self.csv = Path(csv).expanduser()
        self.root = Path(root).expanduser() if root else self.csv.parent

    def __repr__(self) -> str:
        return f"{type(self).__name__}(csv={str(self.csv)!r}, root={str(self.root)!r})"

    def require_files(self) -> None:
        """The CSV and its data root exist; called first by ``load``."""
        if not self.csv.is_file():
            raise DataError(f"CSV file {self.csv} does not exist")
        if not self.root.is_dir():
            raise DataError(f"data root {self.root} does not exist (needed by {self.csv})")

    def rows(
        self, required: Sequence[str | tuple[str, ...]]
    ) -> Iterator[tuple[dict[str, str], str, str]]:
        """Each row of the CSV as ``(row, where, image)``: the one reading path of every layout.

        Checks, in this order, with a message naming the file (and row): the CSV and root exist;
        every ``required`` column is in the header (a tuple is a set of accepted spellings, e.g.
        ``("attributes", "atributes")``); each row's ``image`` cell is not empty. ``where`` is
        ``"CSV, line N"`` with N the line the row starts on (a quoted report may span lines).
        """
        self.require_files()
        with self.csv.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            missing = [
                name if isinstance(name, str) else name[-1]
                for name in required
                if not ({name} if isinstance(name, str) else set(name)) & set(columns)
            ]
            if missing:
                raise DataError(
                    f"{self.csv}: missing column(s) {sorted(missing)}; found {sorted(columns)}"
                )
            end = reader.line_num
            for row in reader:
                where = f"{self.csv}, line {end + 1}"
                end = reader.line_num
                image = (row.get("image") or "").strip()
                if not image:
                    raise DataError(f"{where}, column 'image': empty image path")
                yield row, where, image

    def find_missing(self, records: list[FundusRecord]) -> list[tuple[FundusRecord, str]]:
        """Each record with a missing file (image, or any of ``path_fields``), once, with the
        first absent path; one ``stat`` per file."""
        missing = []
        for record in records:
            for field in self.path_fields:
                path = self.root / (getattr(record, field) or "")
                if not path.is_file():
                    missing.append((record, str(path)))
                    break
        return missing

    def check(self, records: list[FundusRecord]) -> None:
        missing = self.find_missing(records)
        if missing:
            what = f"of {len(records)} images" if self.path_fields == ("image",) else "files"
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(
                f"{len(missing)} {what} listed in {self.csv} are missing:\n"
                + "\n".join(f"  {path} ({r.origin})" for r, path in missing[:10])
                + more
            )

    def locate(self, record: FundusRecord) -> str:
        return str(self.root / record.image)

    def open_image(self, record: FundusRecord, target: int | None = None) -> Image.Image:
        return read_rgb(self.root / record.image, record.origin, target=target)


class FlairCSVSource(CSVSource):
    """The FLAIR/KeepFIT CSV layout: ``,image,atributes,categories`` (pandas index column, the
    ``atributes`` spelling of the real files; ``attributes`` is accepted too).

    Args:
        csv: Path of the CSV file.
        root: Data root the ``image`` paths are relative to; defaults to the CSV's folder. The
            first component of each image path is the dataset name.
    """

    def load(self) -> list[FundusRecord]:
        rows = self.rows(["image", ("attributes", "atributes"), "categories"])
        return [self._record(row, where, image) for row, where, image in rows]

    def _record(self, row: dict[str, str], where: str, image: str) -> FundusRecord:
        attr_col = "attributes" if "attributes" in row else "atributes"
        return FundusRecord(
            image=image,
            dataset=Path(image).parts[0],
            attributes=parse_list_cell(row[attr_col], f"{where}, column '{attr_col}'"),
            categories=parse_list_cell(row["categories"], f"{where}, column 'categories'"),
            origin=where,
        )


class MaskCSVSource(CSVSource):
    """Segmentation data for dense transfer evaluation: a CSV ``image,mask[,categories]`` with
    paths relative to ``root`` (default the CSV's folder); a mask is non-zero on lesions.

    Args:
        csv: Path of the CSV file.
        root: Data root of the image and mask paths.
    """

    path_fields: ClassVar[tuple[str, ...]] = ("image", "mask")

    def load(self) -> list[FundusRecord]:
        records = []
        for row, where, image in self.rows(["image", "mask"]):
            mask = (row.get("mask") or "").strip()
            if not mask:
                raise DataError(f"{where}, column 'mask': empty mask path")
            cats = parse_list_cell(row.get("categories") or "", f"{where}, column 'categories'")
            records.append(
                FundusRecord(
                    image=image,
                    dataset=Path(image).parts[0],
                    categories=cats,
                    origin=where,
                    mask=mask,
                )
            )
        return records

    def open_mask(self, record: FundusRecord) -> Image.Image:
        return read_rgb(self.root / (record.mask or ""), record.origin, mode="L")

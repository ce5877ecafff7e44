"""Readers: one per on-disk format, each turning its rows into :class:`FundusRecord`.

Sources are cheap to construct (the CLI builds them just to print a config); reading and
validation happen in :meth:`Source.load`, called by the DataModule before training starts.
"""

from __future__ import annotations

import ast
import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord


class Source:
    """Base class of all data sources."""

    #: ``open_image`` takes ``target``; callers pass it only then, so sources written before it
    #: existed keep working
    draft_decode: ClassVar[bool] = False

    def load(self) -> list[FundusRecord]:
        """Read and validate every record; raise :class:`DataError` naming the culprit."""
        raise NotImplementedError

    def check(self, records: list[FundusRecord]) -> None:
        """Verify that every image exists; called once, before training."""

    def find_missing(self, records: list[FundusRecord]) -> list[tuple[FundusRecord, str]]:
        """``(record, path)`` of each record whose file is absent, for the data module's
        ``missing`` policy, which lists them all and may drop them. Sources that cannot tell
        record by record keep their all-or-nothing :meth:`check`, which raises by itself."""
        self.check(records)
        return []

    def locate(self, record: FundusRecord) -> str:
        """Where the record's image lives, for messages: a file path where there is one."""
        return record.image

    def open_image(self, record: FundusRecord, target: int | None = None) -> Image.Image:
        """The record's image in RGB. ``target`` is the side the caller resizes it to next: a
        source with ``draft_decode`` may then decode a JPEG at a reduced scale that still covers
        it (see :func:`draft`). Callers that align a mask to the image pass none."""
        raise NotImplementedError

    def open_mask(self, record: FundusRecord) -> Image.Image:
        """The record's lesion mask as a single-channel image (non-zero = lesion)."""
        raise DataError(f"{type(self).__name__} has no segmentation masks ({record.origin})")


def parse_list_cell(cell: str, where: str) -> tuple[str, ...]:
    """Parse a Python-literal list of strings; ``literal_eval`` never executes code."""
    text = (cell or "").strip()
    if not text:
        return ()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise DataError(f"{where}: cannot parse {cell!r} as a Python list literal ({err})") from err
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: expected a list of strings, got {cell!r}")
    return tuple(v.strip() for v in value)


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


#: A draft decode keeps both sides >= DRAFT_MARGIN * target: the field-of-view crop that follows
#: keeps ~0.8-1.0 of the frame, and the resize after it must still shrink (1 / 0.8 = 1.25).
DRAFT_MARGIN = 1.25


def draft(img: Image.Image, target: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (in the DCT, far cheaper than decoding every
    pixel and then throwing most away in the resize), never below ``DRAFT_MARGIN * target`` on
    either side. Other formats decode in full. Call before the pixels are loaded."""
    if img.format == "JPEG":
        side = math.ceil(target * DRAFT_MARGIN)
        img.draft("RGB", (side, side))  # Pillow picks the smallest scale >= the size asked


def read_rgb(path: Path, origin: str, mode: str = "RGB", target: int | None = None) -> Image.Image:
    """Decode an image file (to RGB, or ``mode``: "L" for masks); a broken file is a
    :class:`DataError` naming it. ``target``: see :func:`draft` (RGB only: masks need every
    pixel).

    ``convert`` decodes every pixel inside the ``try``: Pillow opens lazily and a truncated
    file fails only when its pixels are read ("image file is truncated"), which must happen
    here, where the file is named. ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False: set, it
    would fill the cut-off part with grey and train on it silently."""
    try:
        with Image.open(path) as img:
            if target and mode == "RGB":
                draft(img, target)
            return img.convert(mode)
    except (OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path} ({origin}): {err}") from err


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageFolderSource(Source):
    """Downstream classification data laid out as one folder per class: ``root/<class>/<image>``.

    The folder name becomes the record's only category, so zero-shot prompts, probes and
    category retrieval treat it like the first category of a FLAIR CSV row. Folders are often
    named by grade numbers or codes; ``names`` maps them to the class names that the prompts and
    the evaluation config use.

    Args:
        root: Folder holding one sub-folder per class.
        names: Folder name -> class name (folders not listed keep their own name).
        dataset: Dataset name of the records; defaults to the root folder's name.
    """

    draft_decode: ClassVar[bool] = True

    def __init__(
        self, root: str, names: dict[str, str] | None = None, dataset: str | None = None
    ) -> None:
        self.root = Path(root).expanduser()
        self.names = dict(names or {})
        self.dataset = dataset or self.root.name

    def __repr__(self) -> str:
        return f"ImageFolderSource(root={str(self.root)!r})"

    def load(self) -> list[FundusRecord]:
        if not self.root.is_dir():
            raise DataError(f"image folder root {self.root} does not exist")
        folders = sorted(d for d in self.root.iterdir() if d.is_dir() and d.name[0] != ".")
        if not folders:
            raise DataError(f"{self.root} has no class sub-folders (expected root/<class>/<image>)")
        unknown = sorted(set(self.names) - {d.name for d in folders})
        if unknown:
            raise DataError(
                f"{self.root}: names given for folder(s) {unknown} that do not exist; "
                f"folders are {[d.name for d in folders]}"
            )
        records = []
        for folder in folders:
            category = self.names.get(folder.name, folder.name)
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES and path.name[0] != ".":
                    records.append(
                        FundusRecord(
                            image=f"{folder.name}/{path.name}",
                            dataset=self.dataset,
                            categories=(category,),
                            origin=str(path),
                        )
                    )
        if not records:
            raise DataError(f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) in any folder")
        return records

    def open_image(self, record: FundusRecord, target: int | None = None) -> Image.Image:
        return read_rgb(self.root / record.image, record.origin, target=target)

    def locate(self, record: FundusRecord) -> str:
        return str(self.root / record.image)


class SyntheticSource(Source):
    """Procedurally drawn fundus photographs, in memory: the default data of demos and tests.

    Args:
        n: Number of images.
        size: Side of the square images in pixels.
        seed: Generator seed; the same seed gives the same dataset on every machine.
        sites: Number of camera styles, each a separate dataset name.
        offset: Index of the first image, so train/val/test can be disjoint draws of one seed.
        cache: Keep drawn images in memory (per loader worker), so later epochs do not redraw
            them; n * size * size * 3 bytes at most per worker.
        reports: Give every record a free-text report (``text``) and multi-hot ``labels``, as a
            report dataset would, so report-supervised recipes run without real reports.
        label_names: Label vocabulary of ``labels`` (see
            :func:`fundus_lit.data.labels.label_vocabulary`); None = every knowledge category.
        masks: Give every record its lesion mask (drawn with the image), for dense transfer
            evaluation.
        captions: Give every record a long atlas-style caption (``text``), as an image-caption
            dataset (MM-Retinal) would, for two-stream recipes' expert stream; cannot be combined
            with ``reports``.
    """

    def __init__(
        self,
        n: int = 512,
        size: int = 256,
        seed: int = 0,
        sites: int = 2,
        offset: int = 0,
        cache: bool = True,
        reports: bool = False,
        label_names: list[str] | None = None,
        masks: bool = False,
        captions: bool = False,
    ) -> None:
        if reports and captions:
            raise ValueError("SyntheticSource: reports and captions both set the text; pick one")
        self.n, self.size, self.seed, self.sites, self.offset = n, size, seed, sites, offset
        self.cache, self.masks, self.captions = cache, masks, captions
        self.reports = reports
        self.label_names = list(label_names) if label_names is not None else None
        self._synth = None
        self._images: dict[int, Image.Image] = {}
        self._masks: dict[int, Image.Image] = {}

    def __repr__(self) -> str:
        extra = ", reports=True" if self.reports else (", captions=True" if self.captions else "")
        return (
            f"SyntheticSource(n={self.n}, size={self.size}, seed={self.seed}, sites={self.sites}"
            f"{extra})"
        )

    @property
    def synth(self):
        if self._synth is None:  # built lazily: cheap to pickle into workers
            from fundus_lit.synthetic import FundusSynth

            self._synth = FundusSynth(seed=self.seed, size=self.size, sites=self.sites)
        return self._synth

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_synth": None, "_images": {}, "_masks": {}}

    def load(self) -> list[FundusRecord]:
        if self.n <= 0:
            raise DataError(f"SyntheticSource needs n > 0, got n={self.n}")
        report_of, vocabulary = None, None
        if self.reports:  # lazy: the label tools pull in the knowledge dictionary
            from fundus_lit.data.labels import label_vocabulary, multi_hot
            from fundus_lit.synthetic import synthetic_report as report_of

            vocabulary = label_vocabulary(self.label_names)
        caption_of = None
        if self.captions:
            from fundus_lit.synthetic.atlas import atlas_caption as caption_of
        # few distinct category lists exist, and multi_hot re-keys the vocabulary on every call
        vectors: dict[tuple[str, ...], tuple[float, ...]] = {}
        records = []
        for i in range(self.offset, self.offset + self.n):
            site, categories, attributes = self.synth.labels_of(i)
            text = labels = None
            if report_of is not None:
                key = tuple(categories)
                if key not in vectors:
                    vectors[key] = multi_hot(key, vocabulary)
                text, labels = report_of(self.synth, i), vectors[key]
            if caption_of is not None:
                text = caption_of(self.synth, i)
            records.append(
                FundusRecord(
                    image=f"synthetic:{i}",
                    dataset=site,
                    categories=tuple(categories),
                    attributes=tuple(attributes),
                    text=text,
                    labels=labels,
                    origin=f"synthetic seed={self.seed} index={i}",
                    mask=f"synthetic:{i}" if self.masks else None,
                )
            )
        return records

    def _draw(self, index: int) -> tuple[Image.Image, Image.Image | None]:
        """Image and (with ``masks``) lesion mask of one index, drawn once: a mask costs the
        whole drawing, so it is made with the image, and both are cached together."""
        if index in self._images:
            return self._images[index], self._masks.get(index)
        sample = self.synth.sample(index, with_mask=self.masks)
        image, mask = Image.fromarray(sample.image), None
        if sample.lesion_mask is not None:
            mask = Image.fromarray((sample.lesion_mask > 0).astype("uint8") * 255, mode="L")
        if self.cache:
            self._images[index] = image
            if mask is not None:
                self._masks[index] = mask
        return image, mask

    def open_image(self, record: FundusRecord) -> Image.Image:
        return self._draw(int(record.image.split(":", 1)[1]))[0]

    def open_mask(self, record: FundusRecord) -> Image.Image:
        if record.mask is None:
            return super().open_mask(record)
        mask = self._draw(int(record.mask.split(":", 1)[1]))[1]
        assert mask is not None  # records get a mask reference only when masks are drawn
        return mask


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

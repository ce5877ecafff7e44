"""One folder per class: the layout of most public grading datasets."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources.base import Source, read_rgb

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

"""The source seam: :class:`Source`, and the image and cell readers every source shares."""

from __future__ import annotations

import ast
import math
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

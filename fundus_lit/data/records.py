"""The one record type every data source produces.

Every reader (FLAIR CSV, caption CSV, report CSV, image folders, synthetic) turns its rows
into :class:`FundusRecord`, so text builders, samplers and objectives never care where a sample
came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FundusRecord:
    """One fundus photograph and everything known about it.

    Attributes:
        image: Reference to the image: a path relative to the source's data root, an absolute
            path, or a source-specific key (the synthetic source uses ``synthetic:<index>``).
        dataset: Name of the source dataset (the first path component in the FLAIR layout);
            used for dataset-balanced sampling and per-dataset switches.
        categories: Category strings as written in the source (not normalised).
        attributes: Image attributes such as ``clean`` / ``noisy``.
        text: Free text that goes with the image (a report or a caption); None where the
            format carries none, ``""`` where it does but this record's is empty (bad input).
        labels: Multi-hot label vector (report datasets), if any.
        origin: Where the record was read from, e.g. ``"train.csv:12"``; used in error messages.
        mask: Reference to a lesion segmentation mask (dense transfer evaluation), if any; the
            source that made the record opens it.
    """

    image: str
    dataset: str
    categories: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    text: str | None = None
    labels: tuple[float, ...] | None = None
    origin: str = field(default="", compare=False)
    mask: str | None = None

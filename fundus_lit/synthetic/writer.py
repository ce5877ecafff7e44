"""Writing the synthetic dataset in the on-disk layouts real data comes in: one function draws
each image once and writes it, and each layout is only its header and its row.

Every layout stores images at ``site/images/NNNNNN.<format>``, so one folder can serve several
CSV formats (the FLAIR CSVs, ``reports.csv``, ``atlas.csv`` and ``masks.csv`` of one seed share
their images).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from fundus_lit.core.progress import progress

from .atlas import atlas_caption
from .generator import FundusSynth, SynthSample
from .reports import synthetic_report

#: a layout's row of one sample: (sample, index, relative image path, output folder) -> cells
RowOf = Callable[[SynthSample, int, str, Path], list[str]]


def save_image(out: Path, sample: SynthSample, index: int, image_format: str = "png") -> str:
    """Write one image at ``site/images/NNNNNN.<format>`` under `out`; returns the relative
    path."""
    rel = f"{sample.site}/images/{index:06d}.{image_format}"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample.image).save(
        out / rel, **({"quality": 95} if image_format == "jpg" else {})
    )
    return rel


def write_csv_dataset(
    out: str | Path,
    synth: FundusSynth,
    indices: Iterable[int],
    header: list[str],
    row_of: RowOf,
    *,
    name: str,
    image_format: str = "png",
    with_mask: bool = False,
    by_site: bool = False,
) -> list[Path]:
    """Draw every index once, save its image and write ``row_of``'s cells under ``header`` to
    ``out/name`` (or to ``out/<site>.csv`` per camera site with ``by_site``); returns the CSVs."""
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    out = Path(out)
    rows: dict[str, list[list[str]]] = {}
    if by_site:
        rows = {cam.name: [] for cam in synth.cameras}
    for i in progress(indices, desc=f"synth {name or 'site CSVs'}", unit="img"):
        sample = synth.sample(i, with_mask=with_mask)
        image = save_image(out, sample, i, image_format)
        rows.setdefault(sample.site if by_site else name, []).append(row_of(sample, i, image, out))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, table in rows.items():
        path = out / (f"{key}.csv" if by_site else name)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(table)
        paths.append(path)
    return paths


def write_flair_dataset(
    out: str | Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    sites: int = 2,
    image_format: str = "png",
) -> list[Path]:
    """n images in the FLAIR CSV layout, one CSV per site; returns the CSV paths.

    The CSVs mimic what pandas writes (unnamed index column, misspelled ``atributes`` header,
    ``repr`` lists) because that is the format real FLAIR-style data arrives in.
    """
    synth = FundusSynth(seed=seed, size=size, sites=sites)
    counters: dict[str, int] = {}

    def row(sample: SynthSample, i: int, image: str, out: Path) -> list[str]:
        k = counters[sample.site] = counters.get(sample.site, -1) + 1  # pandas' index per file
        return [str(k), image, repr(sample.attributes), repr(sample.categories)]

    header = ["", "image", "atributes", "categories"]
    return write_csv_dataset(
        out, synth, range(n), header, row, name="", image_format=image_format, by_site=True
    )


def write_report_dataset(
    out: str | Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    sites: int = 2,
    image_format: str = "png",
    with_labels: bool = True,
) -> Path:
    """n images with a free-text report each, ``reports.csv`` (``image,report[,labels]``, the
    layout :class:`~fundus_lit.data.sources.reports.ReportCSVSource` reads); returns the CSV path.
    ``labels`` is the ``repr`` of the image's category list, as hospital exports with extracted
    labels provide it."""
    synth = FundusSynth(seed=seed, size=size, sites=sites)

    def row(sample: SynthSample, i: int, image: str, out: Path) -> list[str]:
        cells = [image, synthetic_report(synth, i)]
        return [*cells, repr(sample.categories)] if with_labels else cells

    header = ["image", "report", "labels"] if with_labels else ["image", "report"]
    (path,) = write_csv_dataset(
        out, synth, range(n), header, row, name="reports.csv", image_format=image_format
    )
    return path


def write_atlas_dataset(
    out: str | Path, n: int, size: int = 256, seed: int = 0, sites: int = 1, offset: int = 0
) -> Path:
    """Images ``offset .. offset+n-1`` with a long atlas-style caption each, ``atlas.csv``
    (``image,caption``, the MM-Retinal layout); returns the CSV path."""
    synth = FundusSynth(seed=seed, size=size, sites=sites)

    def row(sample: SynthSample, i: int, image: str, out: Path) -> list[str]:
        return [image, atlas_caption(synth, i)]

    indices = range(offset, offset + n)
    (path,) = write_csv_dataset(out, synth, indices, ["image", "caption"], row, name="atlas.csv")
    return path


def write_mask_dataset(
    out: str | Path, n: int, size: int = 256, seed: int = 0, sites: int = 2
) -> Path:
    """n images with their lesion masks (``site/masks/NNNNNN.png``, 255 on lesions) and
    ``masks.csv`` (``image,mask,categories``), the layout
    :class:`~fundus_lit.data.sources.MaskCSVSource` reads; returns the CSV path."""
    synth = FundusSynth(seed=seed, size=size, sites=sites)

    def row(sample: SynthSample, i: int, image: str, out: Path) -> list[str]:
        mask = f"{sample.site}/masks/{i:06d}.png"
        (out / mask).parent.mkdir(parents=True, exist_ok=True)
        lesion = (np.asarray(sample.lesion_mask) > 0).astype(np.uint8) * 255
        Image.fromarray(lesion, mode="L").save(out / mask)
        return [image, mask, repr(list(sample.categories))]

    header = ["image", "mask", "categories"]
    (path,) = write_csv_dataset(out, synth, range(n), header, row, name="masks.csv", with_mask=True)
    return path

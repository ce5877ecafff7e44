"""Synthetic images with their lesion masks on disk, for dense transfer evaluation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from fundus_lit.synthetic.generator import FundusSynth, save_image


def write_mask_dataset(
    out: str | Path, n: int, size: int = 256, seed: int = 0, sites: int = 2
) -> Path:
    """Write images (``site/images/NNNNNN.png``, the same as the FLAIR writer's), lesion masks
    (``site/masks/NNNNNN.png``, 255 on lesions) and ``masks.csv`` (``image,mask,categories``),
    the layout :class:`~fundus_lit.data.sources.MaskCSVSource` reads."""
    out = Path(out)
    synth = FundusSynth(seed=seed, size=size, sites=sites)
    rows = []
    for i in range(n):
        sample = synth.sample(i, with_mask=True)
        image, mask = save_image(out, sample, i), f"{sample.site}/masks/{i:06d}.png"
        (out / mask).parent.mkdir(parents=True, exist_ok=True)
        lesion = (np.asarray(sample.lesion_mask) > 0).astype(np.uint8) * 255
        Image.fromarray(lesion, mode="L").save(out / mask)
        rows.append([image, mask, repr(list(sample.categories))])
    path = out / "masks.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "categories"])
        writer.writerows(rows)
    return path

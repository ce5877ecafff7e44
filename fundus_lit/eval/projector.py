"""The embedding projector: image embeddings with their metadata and thumbnails, written where
TensorBoard's projector plugin reads them.

A TensorBoard run directory (the folder of the event files) gets ``projector_config.pbtxt``,
listing every embedding written there, and one folder ``projector/<name>/`` per embedding:
``tensors.tsv`` (a row per point), ``metadata.tsv`` (a header, then the dataset, first category
and attributes of each point) and ``sprite.png`` (the points' thumbnails in row-major order).
Fit (:class:`~fundus_lit.callbacks.EmbeddingProjector`) and ``fundus-lit evaluate`` write into
the same run directory: each adds its entry to the config instead of replacing the file, and an
entry written again under the same name replaces the old one.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fundus_lit.core.errors import ConfigError, DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.samplers import permutation
from fundus_lit.data.sources import Source
from fundus_lit.data.transforms import ImagePipeline

CONFIG_FILE = "projector_config.pbtxt"  # the name the plugin looks for in each run directory
HEADER = ("dataset", "first category", "attributes")
MAX_SPRITE_SIDE = 8192  # the projector refuses larger sprites


@dataclass
class ProjectorOptions:
    """The embedding projector (TensorBoard's PROJECTOR tab).

    Args:
        max_points: Images written at most, a sample of the split that is the same every run
            when it holds more; 0 writes no projector.
        thumbnail_size: Side of each image's thumbnail in the sprite, in pixels (smaller when
            the sprite would exceed the projector's 8192 px).
    """

    max_points: int = 1000
    thumbnail_size: int = 32

    def __post_init__(self) -> None:
        if self.max_points < 0:
            raise ConfigError(
                f"projector.max_points must be >= 0 (0 writes none), got {self.max_points}"
            )
        if self.thumbnail_size < 1:
            raise ConfigError(f"projector.thumbnail_size must be >= 1, got {self.thumbnail_size}")


def sample_points(n: int, max_points: int, seed: int = 0) -> Tensor:
    """Indices of at most ``max_points`` of ``n`` points, increasing, the same every run."""
    if n <= max_points:
        return torch.arange(n)
    return torch.tensor(sorted(permutation(n, seed)[:max_points]), dtype=torch.long)


def tile_size(n_points: int, thumbnail_size: int) -> int:
    """The thumbnail side that keeps a near-square sprite of ``n_points`` within the limit."""
    cols = max(1, math.ceil(math.sqrt(n_points)))
    return max(1, min(thumbnail_size, MAX_SPRITE_SIDE // cols))


def thumbnails(images: Tensor, size: int) -> Tensor:
    """(B, 3, size, size) uint8 thumbnails of network inputs (uint8, or floats in [0, 1]),
    made on the images' device."""
    if images.shape[0] == 0:
        return images.new_zeros((0, 3, size, size), dtype=torch.uint8)
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def open_thumbnails(
    items: Sequence[tuple[Source, FundusRecord]], size: int, crop_fov: bool = True
) -> Tensor:
    """(N, 3, size, size) uint8 thumbnails read from each record's source (field-of-view crop,
    centred padding, as the data module prepares images); an unreadable image stays black."""
    pipeline = ImagePipeline(size, crop_fov)
    out = torch.zeros((len(items), 3, size, size), dtype=torch.uint8)
    for i, (source, record) in enumerate(items):
        drafts = getattr(source, "draft_decode", False)
        try:
            image = source.open_image(record, size) if drafts else source.open_image(record)
            out[i] = pipeline(image.convert("RGB"))
        except (DataError, OSError, SyntaxError):
            continue
    return out


def metadata_row(record: FundusRecord) -> list[str]:
    """The metadata columns of :data:`HEADER` for one record."""
    first = record.categories[0] if record.categories else ""
    return [record.dataset, first, ", ".join(record.attributes)]


def _cell(value: str) -> str:
    """A TSV cell: tabs and line breaks would split a row or a column; they become spaces."""
    return re.sub(r"[\t\r\n]+", " ", str(value)).strip()


def sprite(thumbs: Tensor) -> Image.Image:
    """The thumbnails on a near-square grid, row-major, black where the grid has no point."""
    n, _, h, w = thumbs.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    pixels = thumbs.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = pixels[i]
    return Image.fromarray(grid)


def _replace(path: Path, write) -> None:
    """Write ``path`` through a temporary file, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_projector(
    log_dir: str | Path,
    name: str,
    emb: Tensor,
    records: Sequence[FundusRecord],
    thumbs: Tensor | None = None,
) -> Path:
    """Write one embedding for the projector into the run directory ``log_dir``.

    Args:
        log_dir: The TensorBoard run directory.
        name: The embedding's name in the projector (and its folder under ``projector/``); an
            entry of the same name is replaced.
        emb: (N, D) embeddings.
        records: The record of each row (its metadata).
        thumbs: (N, 3, S, S) uint8 thumbnails, or none for a projector without images.

    Returns:
        The folder written.
    """
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    if emb.ndim != 2 or len(records) != emb.shape[0]:
        raise ValueError(f"{len(records)} records for embeddings of shape {tuple(emb.shape)}")
    if thumbs is not None and thumbs.shape[0] != emb.shape[0]:
        raise ValueError(f"{thumbs.shape[0]} thumbnails for {emb.shape[0]} embeddings")
    log_dir = Path(log_dir)
    folder = log_dir / "projector" / name
    folder.mkdir(parents=True, exist_ok=True)
    matrix = emb.detach().float().cpu().numpy()
    _replace(folder / "tensors.tsv", lambda p: np.savetxt(p, matrix, fmt="%.7g", delimiter="\t"))
    rows = [HEADER, *(metadata_row(r) for r in records)]
    text = "".join("\t".join(_cell(v) for v in row) + "\n" for row in rows)
    _replace(folder / "metadata.tsv", lambda p: p.write_text(text, encoding="utf-8"))

    config = ProjectorConfig()
    config_path = log_dir / CONFIG_FILE
    if config_path.is_file():
        text_format.Parse(config_path.read_text(encoding="utf-8"), config)
    kept = [e for e in config.embeddings if e.tensor_name != name]
    del config.embeddings[:]
    config.embeddings.extend(kept)
    info = config.embeddings.add()
    info.tensor_name = name
    info.tensor_path = f"projector/{name}/tensors.tsv"
    info.tensor_shape.extend(matrix.shape)
    info.metadata_path = f"projector/{name}/metadata.tsv"
    if thumbs is not None:
        side = tile_size(thumbs.shape[0], thumbs.shape[-1])
        if side != thumbs.shape[-1] or thumbs.shape[-2] != thumbs.shape[-1]:
            thumbs = thumbnails(thumbs, side)
        _replace(folder / "sprite.png", lambda p: sprite(thumbs).save(p, format="PNG"))
        info.sprite.image_path = f"projector/{name}/sprite.png"
        info.sprite.single_image_dim.extend([side, side])
    pbtxt = text_format.MessageToString(config)
    _replace(config_path, lambda p: p.write_text(pbtxt, encoding="utf-8"))
    return folder


def project_split(
    log_dir: str | Path,
    name: str,
    emb: Tensor,
    records: Sequence[FundusRecord],
    split: Sequence[tuple[Source, FundusRecord]],
    options: ProjectorOptions,
    crop_fov: bool = True,
) -> Path | None:
    """The projector of an encoded split: at most ``options.max_points`` of its rows (the same
    every run), thumbnails read from the records' sources; None when ``max_points`` is 0.

    ``emb`` and ``records`` are the encoded rows; ``split`` holds the ``(source, record)`` items
    of the split (the records are looked up there by identity)."""
    if options.max_points == 0 or not len(records):
        return None
    rows = sample_points(len(records), options.max_points)
    picked = [records[i] for i in rows.tolist()]
    source_of = {id(record): source for source, record in split}
    side = tile_size(len(picked), options.thumbnail_size)
    thumbs = open_thumbnails([(source_of[id(r)], r) for r in picked], side, crop_fov)
    return write_projector(log_dir, name, emb[rows], picked, thumbs)

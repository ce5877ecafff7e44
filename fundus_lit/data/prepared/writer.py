"""Writing a prepared folder (``fundus-lit prepare``): decode, crop and resize each image once,
in worker processes, into Arrow shards; resumable shard by shard."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.core.progress import progress as show_progress
from fundus_lit.data.prepared.format import (
    FIELDS,
    FORMAT,
    MANIFEST,
    features,
    open_table,
    sha256_file,
    shard_name,
)
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources import Source
from fundus_lit.data.transforms import fov_bbox


def shrink(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Longer side to ``size``, aspect kept, with :func:`~fundus_lit.data.transforms.pad_resize`'s
    rounding (so a pipeline at ``size`` only pads); smaller images are left as they are, as
    enlarging them would only cost bytes."""
    scale = size / max(img.width, img.height)
    if scale >= 1:
        return img
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    return img.resize((w, h), resample)


def prepare_image(
    source: Source, record: FundusRecord, size: int, crop_fov: bool, quality: int
) -> tuple[bytes, bytes | None]:
    """JPEG bytes of the record's prepared image and, if it has a mask, PNG bytes of its mask.

    Geometry: the field of view is cropped with the training pipeline's own
    :func:`~fundus_lit.data.transforms.fov_bbox`, then the longer side is resized to ``size``
    (bicubic, as in training) without padding. ``ImagePipeline(s, crop_fov)`` on the result then
    does what it does to the raw image: its FOV crop finds the (already cropped) frame again and
    its pad-resize pads to a square; padding here instead would store black pixels and blur the
    aperture edge with JPEG ringing. The mask is cropped by the image's box and resized with
    nearest neighbours to the image's new size, so it stays binary and aligned.

    JPEGs are written with full-resolution chroma (4:4:4): microaneurysms and small haemorrhages
    are a few pixels across at 512 px, and halving the colour resolution would fade their red.
    """
    mask = None
    if record.mask is None:
        drafts = getattr(source, "draft_decode", False)
        image = source.open_image(record, size) if drafts else source.open_image(record)
    else:  # a mask needs the image at full size: the crop box must fit both
        image, mask = source.open_image(record), source.open_mask(record)
        if mask.size != image.size:
            raise DataError(
                f"mask of {record.image} is {mask.size[0]}x{mask.size[1]} but the image is "
                f"{image.size[0]}x{image.size[1]} ({record.origin})"
            )
    box = fov_bbox(image) if crop_fov else None
    if box:
        image = image.crop(box)
        mask = mask.crop(box) if mask is not None else None
    image = shrink(image.convert("RGB"), size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    if mask is None:
        return buffer.getvalue(), None
    mask = mask.convert("L")
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
    mask_buffer = io.BytesIO()
    mask.save(mask_buffer, format="PNG")
    return buffer.getvalue(), mask_buffer.getvalue()


def fingerprint(records: list[FundusRecord]) -> str:
    """sha256 of every record's compared fields in order: what a resumed run must find again."""
    digest = hashlib.sha256()
    for record in records:
        values = [getattr(record, field) for field in FIELDS]
        digest.update(json.dumps(values, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def write_shard(out: Path, index: int, columns: dict[str, list]) -> dict[str, Any]:
    """Write one shard atomically (temporary name, then rename) and describe it: a shard file
    that exists under its final name is complete, which is what resuming relies on."""
    import datasets
    import pyarrow as pa

    table = datasets.Dataset.from_dict(columns, features=features()).data.table
    final = out / shard_name(index)
    tmp = out / f".{final.name}.tmp-{os.getpid()}"
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100)  # small batches: cheap row lookup
    entry = {
        "file": final.name,
        "records": table.num_rows,
        "bytes": tmp.stat().st_size,
        "sha256": sha256_file(tmp),
    }
    os.replace(tmp, final)
    return entry


def _describe(path: Path) -> dict[str, Any]:
    """Manifest entry of a shard written by a run that stopped before recording it."""
    return {
        "file": path.name,
        "records": open_table(path).num_rows,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


# Worker processes of prepare(): the sources are sent once, not with every record.
_WORKER: dict[str, Any] = {}


def _init_worker(sources: list[Source], size: int, crop_fov: bool, quality: int) -> None:
    _WORKER.update(sources=sources, size=size, crop_fov=crop_fov, quality=quality)


def _prepare_in_worker(item: tuple[int, FundusRecord]) -> tuple[bytes, bytes | None]:
    source = _WORKER["sources"][item[0]]
    return prepare_image(source, item[1], _WORKER["size"], _WORKER["crop_fov"], _WORKER["quality"])


def _start(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: the existing one when it describes the same job, else a
    new one; a folder holding something else, or the same folder asked for a different job, is
    an error rather than a silent mix of two preparations."""
    path = out / MANIFEST
    if not path.is_file():
        if out.exists() and any(p.name[0] != "." for p in out.iterdir()):
            raise DataError(
                f"{out} exists and is not a prepared folder (no {MANIFEST}); pick a new or empty "
                "folder for --out"
            )
        out.mkdir(parents=True, exist_ok=True)
        _write_json(path, manifest)
        return manifest
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if found.get("format") != FORMAT:
        raise DataError(f"{path} is not a fundus-lit prepare manifest ({FORMAT})")
    differ = {
        key: (found["arguments"].get(key), value)
        for key, value in manifest["arguments"].items()
        if found["arguments"].get(key) != value
    }
    if differ:
        said = ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in differ.items())
        raise DataError(
            f"{out} was prepared with different arguments: {said}; prepare into a new --out, or "
            "delete the folder to start over"
        )
    if found.get("fingerprint") != manifest["fingerprint"]:
        raise DataError(
            f"the source records changed since {out} was prepared ({found.get('total')} records "
            f"then, {manifest['total']} now, or different contents); prepare into a new --out, or "
            "delete the folder to start over"
        )
    return found


def prepare(
    sources: list[Source],
    out: str | Path,
    size: int = 512,
    crop_fov: bool = True,
    quality: int = 90,
    shard_size: int = 1000,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write a prepared copy of ``sources`` under ``out``, or finish an interrupted one.

    Every record is opened once, field-of-view cropped and resized to ``size`` on its longer side
    (see :func:`prepare_image` for why there is no padding), and stored as a JPEG with every
    record field, in shards of ``shard_size`` rows. Re-running with the same arguments skips the
    shards already written and continues; different arguments, or sources whose records changed,
    are an error. Train with ``data.image_size <= size`` and the same ``crop_fov``.

    Args:
        sources: Sources to prepare, in order (their records are concatenated).
        out: Output folder: new, empty, or an interrupted preparation of the same job.
        size: Longer side of the stored images; images already smaller are kept as they are.
        crop_fov: Crop the black border around the fundus aperture first, as the training
            pipeline does.
        quality: JPEG quality of the stored images.
        shard_size: Records per shard file.
        workers: Processes decoding and encoding images; 0 does it in this process.
        progress: Show a progress bar (where :mod:`fundus_lit.core.progress` draws one).

    Returns:
        The output folder.
    """
    if size < 8:
        raise DataError(f"prepare: size must be at least 8 px, got {size}")
    if not 1 <= quality <= 100:
        raise DataError(f"prepare: quality must be in 1..100, got {quality}")
    if shard_size < 1:
        raise DataError(f"prepare: shard_size must be at least 1, got {shard_size}")
    if not sources:
        raise DataError("prepare: no sources given")
    out = Path(out).expanduser()
    items: list[tuple[int, FundusRecord]] = []
    for i, source in enumerate(sources):
        records = source.load()
        source.check(records)  # a missing file fails now, not hours in
        items.extend((i, record) for record in records)
    if not items:
        raise DataError(f"prepare: the sources hold no records ({sources})")
    records = [record for _, record in items]
    manifest = _start(
        out,
        {
            "format": FORMAT,
            "arguments": {
                "size": size,
                "crop_fov": crop_fov,
                "quality": quality,
                "shard_size": shard_size,
            },
            "sources": [repr(s) for s in sources],
            "fingerprint": fingerprint(records),
            "total": len(records),
            "datasets": dict(sorted(Counter(r.dataset for r in records).items())),
            "masks": sum(r.mask is not None for r in records),
            "fov_cropped": crop_fov,
            "complete": False,
            "shards": [],
        },
    )
    for stale in out.glob(".shard-*.tmp-*"):  # shards an interrupted run was writing
        stale.unlink()
    recorded = {entry["file"]: entry for entry in manifest["shards"]}
    manifest["complete"] = False  # until every shard is there again
    shards: list[dict[str, Any]] = []
    pool = None
    if workers > 0:
        pool = ProcessPoolExecutor(
            workers, initializer=_init_worker, initargs=(sources, size, crop_fov, quality)
        )

    def here(item: tuple[int, FundusRecord]) -> tuple[bytes, bytes | None]:
        return prepare_image(sources[item[0]], item[1], size, crop_fov, quality)

    desc = f"prepare {out.name}"
    bar = show_progress(total=len(items), desc=desc, unit="img", disable=not progress)
    try:
        for k in range(math.ceil(len(items) / shard_size)):
            chunk = items[k * shard_size : (k + 1) * shard_size]
            path = out / shard_name(k)
            if path.is_file():  # complete: shards only ever appear under their final name
                entry = recorded.get(path.name) or _describe(path)
                if entry["records"] != len(chunk):
                    raise DataError(
                        f"{path} holds {entry['records']} records, expected {len(chunk)}; "
                        "delete it and re-run to write it again"
                    )
                bar.update(len(chunk))
            else:
                results: Iterator[tuple[bytes, bytes | None]] = (
                    pool.map(_prepare_in_worker, chunk, chunksize=4) if pool else map(here, chunk)
                )
                columns: dict[str, list] = {key: [] for key in features()}
                for (_, record), (jpeg, mask) in zip(chunk, results):
                    for field in FIELDS:
                        columns[field].append(getattr(record, field))
                    columns["origin"].append(record.origin)
                    columns["pixels"].append({"bytes": jpeg, "path": None})
                    columns["mask_pixels"].append(
                        {"bytes": mask, "path": None} if mask is not None else None
                    )
                    bar.update()
                entry = write_shard(out, k, columns)
            shards.append(entry)
            later = [e for name, e in recorded.items() if name > path.name]
            manifest["shards"] = shards + later  # a crash now loses no recorded shard
            _write_json(out / MANIFEST, manifest)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    manifest["shards"] = shards
    manifest["complete"] = True
    _write_json(out / MANIFEST, manifest)
    return out

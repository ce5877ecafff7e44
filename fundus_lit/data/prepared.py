"""A prepared copy of any source: field-of-view crop and resize done once, stored as small JPEGs.

Public fundus photographs are 2,000-4,000 px JPEGs and PNGs; decoding one costs far more than
the training step spends on it at 224-512 px. :func:`prepare` pays the decode, the crop and the
resize once and writes the results as Arrow shards (an HF ``datasets`` Image column next to every
record field), which :class:`PreparedSource` reads by memory-mapped random access.

Layout of a prepared folder::

    manifest.json         arguments, per-shard record counts, sizes and sha256, totals, fingerprint
    shard-00000.arrow     rows 0 .. shard_size-1: HF-datasets Arrow (stream) file
    shard-00001.arrow     ...

One Arrow file per shard, because Arrow is read in place (memory-mapped, zero-copy): every loader
worker on every node maps the same files and the page cache holds each once per machine, with no
per-worker copy and no decompression; a parquet shard would be decoded into memory per process.
Each shard is a plain HF dataset (``datasets.Dataset.from_file("shard-00000.arrow")``) for
inspection. Shards of a fixed number of rows make resume simple (shard k is always rows
``k * shard_size ...``) and keep files large enough for network file systems yet small enough to
checksum, copy and re-create one at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.data.hf_source import decode_image
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources import Source
from fundus_lit.data.transforms import fov_bbox

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["PreparedSource", "prepare", "prepare_image"]

FORMAT = "fundus-lit-prepared/1"
MANIFEST = "manifest.json"
#: record fields stored as columns, in FundusRecord order
FIELDS = ("image", "dataset", "categories", "attributes", "text", "labels", "mask")
_SHARD = re.compile(r"shard-(\d+)\.arrow, row (\d+)\b")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def _features() -> Any:
    import datasets

    text = datasets.Value("string")
    return datasets.Features(
        {
            "image": text,
            "dataset": text,
            "categories": datasets.List(text),
            "attributes": datasets.List(text),
            "text": text,
            "labels": datasets.List(datasets.Value("float64")),  # float64: values round-trip
            "mask": text,
            "origin": text,  # the raw source's origin, for messages
            "pixels": datasets.Image(),  # the prepared JPEG
            "mask_pixels": datasets.Image(),  # the prepared mask as PNG, or null
        }
    )


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
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

    table = datasets.Dataset.from_dict(columns, features=_features()).data.table
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
        "records": _open_table(path).num_rows,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _open_table(path: Path) -> pa.Table:
    """A shard's Arrow table, memory-mapped through HF datasets."""
    import datasets

    try:
        return datasets.Dataset.from_file(str(path)).data.table
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"cannot read prepared shard {path}: {err}") from err


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
        progress: Show a progress bar.

    Returns:
        The output folder.
    """
    from tqdm.auto import tqdm

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

    bar = tqdm(total=len(items), unit="img", desc=f"prepare {out.name}", disable=not progress)
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
                columns: dict[str, list] = {key: [] for key in _features()}
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


class PreparedSource(Source):
    """A folder written by :func:`prepare` (``fundus-lit prepare``): records from the metadata
    columns, images decoded from the stored JPEGs by memory-mapped random access.

    The records equal those of the raw sources, so splits, text and sampling do not change; the
    images are already cropped to the field of view and at most ``size`` px, so train with
    ``data.image_size`` up to the prepared size and the same ``crop_fov`` (the pipeline's crop
    finds the cropped frame again). Each loader worker maps the shards itself on first use.

    Args:
        path: The prepared folder.
        verify: Check every shard's sha256 against the manifest in :meth:`check` (reads all
            shards once; sizes are always compared).
    """

    draft_decode: ClassVar[bool] = True

    def __init__(self, path: str, verify: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.verify = verify
        self._manifest: dict[str, Any] | None = None
        self._tables: dict[int, pa.Table] = {}
        self._index: dict[FundusRecord, tuple[int, int]] | None = None

    def __repr__(self) -> str:
        return f"PreparedSource(path={str(self.path)!r})"

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_tables": {}, "_index": None}

    @property
    def manifest(self) -> dict[str, Any]:
        """The folder's manifest; an unfinished or foreign folder is an error saying what to do."""
        if self._manifest is None:
            path = self.path / MANIFEST
            if not path.is_file():
                what = "does not exist" if not self.path.exists() else f"has no {MANIFEST}"
                raise DataError(
                    f"prepared folder {self.path} {what}; write it with fundus-lit prepare"
                )
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise DataError(f"cannot read {path}: {err}") from err
            if manifest.get("format") != FORMAT:
                raise DataError(f"{path} is not a fundus-lit prepare manifest ({FORMAT})")
            if not manifest.get("complete"):
                raise DataError(
                    f"{self.path} is an unfinished preparation ({len(manifest['shards'])} of "
                    f"{math.ceil(manifest['total'] / manifest['arguments']['shard_size'])} "
                    "shards); re-run fundus-lit prepare with the same arguments to finish it"
                )
            self._manifest = manifest
        return self._manifest

    @property
    def size(self) -> int:
        """Longer side of the stored images."""
        return int(self.manifest["arguments"]["size"])

    @property
    def fov_cropped(self) -> bool:
        return bool(self.manifest["fov_cropped"])

    def _table(self, shard: int) -> pa.Table:
        if shard not in self._tables:
            entries = self.manifest["shards"]
            if not 0 <= shard < len(entries):
                raise DataError(f"{self.path} has no shard {shard} ({len(entries)} shards)")
            path = self.path / entries[shard]["file"]
            if not path.is_file():
                raise DataError(
                    f"prepared shard {path} is missing (listed in {self.path / MANIFEST})"
                )
            self._tables[shard] = _open_table(path)
        return self._tables[shard]

    def load(self) -> list[FundusRecord]:
        records = []
        for k, entry in enumerate(self.manifest["shards"]):
            table = self._table(k)
            if table.num_rows != entry["records"]:
                raise DataError(
                    f"prepared shard {self.path / entry['file']} has {table.num_rows} rows, the "
                    f"manifest says {entry['records']}"
                )
            rows = table.select([*FIELDS, "origin"]).to_pylist()
            for row, values in enumerate(rows):
                labels = values["labels"]
                records.append(
                    FundusRecord(
                        image=values["image"],
                        dataset=values["dataset"],
                        categories=tuple(values["categories"]),
                        attributes=tuple(values["attributes"]),
                        text=values["text"],
                        labels=tuple(labels) if labels is not None else None,
                        origin=f"{self.path / entry['file']}, row {row} "
                        f"(prepared from {values['origin']})",
                        mask=values["mask"],
                    )
                )
        return records

    def check(self, records: list[FundusRecord]) -> None:
        """Every shard the manifest lists is there with its size (and, with ``verify``, its
        sha256): a shard truncated by a copy fails here, not as a decode error mid-epoch."""
        for entry in self.manifest["shards"]:
            path = self.path / entry["file"]
            if not path.is_file():
                raise DataError(
                    f"prepared shard {path} is missing (listed in {self.path / MANIFEST})"
                )
            if path.stat().st_size != entry["bytes"]:
                raise DataError(
                    f"prepared shard {path} is {path.stat().st_size} bytes, the manifest says "
                    f"{entry['bytes']}: the file is damaged; prepare again or copy it again"
                )
            if self.verify and sha256_file(path) != entry["sha256"]:
                raise DataError(
                    f"prepared shard {path} does not match its sha256 in the manifest: the file "
                    "is damaged; prepare again or copy it again"
                )

    def _locate(self, record: FundusRecord) -> tuple[int, int]:
        match = _SHARD.search(record.origin)
        if match:
            return int(match.group(1)), int(match.group(2))
        if self._index is None:  # a record made elsewhere (e.g. by the raw source): by value
            self._index = {}
            for r in self.load():
                self._index.setdefault(r, self._locate(r))
        if record not in self._index:
            raise DataError(f"{record.image} ({record.origin}) is not a record of {self.path}")
        return self._index[record]

    def _cell(self, record: FundusRecord, column: str) -> tuple[bytes | None, str]:
        shard, row = self._locate(record)
        table = self._table(shard)
        where = f"{self.path / shard_name(shard)}, row {row}"
        if row >= table.num_rows:
            raise DataError(f"{where} does not exist ({table.num_rows} rows)")
        cell = table.column(column)[row]
        return (cell["bytes"].as_py() if cell.is_valid else None), where

    def open_image(self, record: FundusRecord, target: int | None = None) -> Image.Image:
        blob, where = self._cell(record, "pixels")
        if blob is None:
            raise DataError(f"{where}: no image bytes")
        return decode_image(blob, where, target=target)

    def open_mask(self, record: FundusRecord) -> Image.Image:
        if record.mask is None:
            return super().open_mask(record)
        blob, where = self._cell(record, "mask_pixels")
        if blob is None:
            raise DataError(f"{where}: no mask bytes")
        return decode_image(blob, where, mode="L")

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

from fundus_lit.data.prepared.reader import PreparedSource
from fundus_lit.data.prepared.writer import prepare, prepare_image

__all__ = ["PreparedSource", "prepare", "prepare_image"]

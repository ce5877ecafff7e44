"""Training image path throughput: raw multi-megapixel JPEGs vs the prepared cache (fundus-lit
prepare), per core.

Per image, a loader worker pays ``source.open_image`` + ``ImagePipeline`` (FOV crop, pad-resize)
at ``data.image_size``. Measured on the same images in one run, single process, one torch thread:

- raw, full decode: a CSV source decoding every pixel (what every epoch paid before);
- raw, draft decode: the same source decoding JPEGs at a reduced scale (the default now);
- prepared: ``PreparedSource`` over a ``prepare(size=512)`` copy of the same source.

The raw images are synthetic fundus photographs drawn at 1,536-2,688 px FOV diameter on a 3:2
black canvas (2,304-4,032 px wide, as camera frames are), saved as quality-95 JPEG. They are
smoother than real photographs, whose noise makes entropy decoding, which no draft skips, dearer:
on real data the raw paths are slower and the prepared ratio higher. Rounds alternate the
variants so machine noise hits all alike; each figure is the median over rounds. Goal: prepared /
raw full >= 5.

    python benchmarks/prepared_speed.py [--n 48] [--image_size 512] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results import report  # sibling module: benchmarks run as scripts

from fundus_lit.data import FlairCSVSource, FundusRecord, PreparedSource, Source
from fundus_lit.data.prepared import prepare
from fundus_lit.data.transforms import ImagePipeline
from fundus_lit.synthetic import FundusSynth

SIDES = (1536, 2048, 2688)  # FOV diameters; the frames are 1.5x as wide
QUICK_SIDES = (1536, 2048)


def write_raw_jpegs(root: Path, n: int, sides: tuple[int, ...], seed: int = 0) -> Path:
    """n synthetic fundus JPEGs in the FLAIR CSV layout under ``root`` (sizes cycling through
    ``sides``); returns the CSV. Drawing costs seconds per new size, then ~0.5 s an image."""
    synths = {side: FundusSynth(seed=seed, size=side, sites=1) for side in sides}
    rows = []
    for i in range(n):
        side = sides[i % len(sides)]
        fundus = Image.fromarray(synths[side].sample(i).image)
        frame = Image.new("RGB", (side * 3 // 2, side))
        frame.paste(fundus, ((frame.width - side) // 2, 0))
        rel = f"camera/images/{i:04d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        frame.save(root / rel, quality=95)
        rows.append([i, rel, "[]", "['normal']"])
    path = root / "camera.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["", "image", "atributes", "categories"])
        writer.writerows(rows)
    return path


def time_path(
    open_image: Callable[[FundusRecord], Image.Image],
    records: list[FundusRecord],
    pipeline: ImagePipeline,
) -> float:
    """Seconds per image of open + pipeline over ``records``."""
    t0 = time.perf_counter()
    for record in records:
        pipeline(open_image(record))
    return (time.perf_counter() - t0) / len(records)


def mean_abs_diff(a: Source, b: Source, records: list[FundusRecord], size: int) -> float:
    """Mean absolute uint8 difference of the pipeline outputs of two sources, all images."""
    pipeline = ImagePipeline(size)
    diffs = [
        (pipeline(a.open_image(r)).float() - pipeline(b.open_image(r, size)).float()).abs().mean()
        for r in records
    ]
    return float(np.mean(diffs))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=48, help="raw images")
    parser.add_argument("--image_size", type=int, default=512, help="data.image_size")
    parser.add_argument("--prepared_size", type=int, default=512, help="prepare --size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="12 images, smaller, 1 round")
    args = parser.parse_args(argv)
    n, rounds, sides = (12, 1, QUICK_SIDES) if args.quick else (args.n, args.rounds, SIDES)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        raw = FlairCSVSource(str(write_raw_jpegs(Path(tmp) / "raw", n, sides)))
        records = raw.load()
        print(f"drew {n} raw JPEGs in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        out = prepare([raw], Path(tmp) / "prepared", size=args.prepared_size, progress=False)
        prepare_s = (time.perf_counter() - t0) / n
        prepared = PreparedSource(str(out))
        pipeline = ImagePipeline(args.image_size)
        size = args.image_size
        variants: dict[str, Callable[[FundusRecord], Image.Image]] = {
            "raw JPEG, full decode": raw.open_image,
            "raw JPEG, draft decode": lambda r: raw.open_image(r, size),
            f"prepared {args.prepared_size} px": lambda r: prepared.open_image(r, size),
        }
        for open_image in variants.values():  # warm: page cache, shard maps, pipeline
            time_path(open_image, records[:2], pipeline)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, open_image in variants.items():
                times[name].append(time_path(open_image, records, pipeline))
        per = {name: statistics.median(t) for name, t in times.items()}
        diff = mean_abs_diff(raw, prepared, records, size)
        raw_bytes = sum((raw.root / r.image).stat().st_size for r in records) / n
        prep_bytes = sum(s["bytes"] for s in prepared.manifest["shards"]) / n
        frames = sorted({Image.open(raw.root / r.image).size for r in records})

    full = per["raw JPEG, full decode"]
    print(
        f"\ntraining image path at image_size {size}, {n} raw JPEGs "
        f"({', '.join(f'{w}x{h}' for w, h in frames)}), 1 process, 1 torch thread, "
        f"median of {rounds} round(s)"
    )
    print(f"{'source':<28}{'images/s':>10}{'ms/image':>10}{'vs raw full':>13}")
    for name, seconds in per.items():
        print(f"{name:<28}{1 / seconds:>10.1f}{1000 * seconds:>10.1f}{full / seconds:>12.2f}x")
    ratio = full / per[f"prepared {args.prepared_size} px"]
    print(
        f"ratio prepared / raw full decode: {ratio:.2f}x (goal >= 5); "
        f"prepared / raw draft decode: {per['raw JPEG, draft decode'] / (full / ratio):.2f}x"
    )
    print(
        f"one-off prepare: {1000 * prepare_s:.0f} ms/image; bytes/image: raw "
        f"{raw_bytes / 1e6:.2f} MB, prepared {prep_bytes / 1e3:.0f} kB; mean |prepared - raw| "
        f"after the pipeline: {diff:.2f} (uint8)"
    )
    report("prepared cache", ratio, f"prepared {args.prepared_size} px / raw JPEG images/s", ">= 5")
    return {name: 1 / s for name, s in per.items()} | {"ratio": ratio, "mean_abs_diff": diff}


if __name__ == "__main__":
    main()

"""Reduced-scale (draft) JPEG decoding vs full decoding of the same large fundus JPEGs.

A loader reading a 2,000-4,000 px JPEG for a 224-512 px network input can let libjpeg decode at
1/2, 1/4 or 1/8 scale in the DCT (``read_rgb(..., target=image_size)``), never below 1.25x the
target so the field-of-view crop still leaves more pixels than the resize keeps. Measured: open +
ImagePipeline per image, single process, one torch thread, on the same images in one run (rounds
alternate full and draft; medians), and how far the pipeline outputs differ (mean absolute
difference on uint8; 0 = identical). The images are drawn by ``prepared_speed.write_raw_jpegs``.

    python benchmarks/decode_speed.py [--n 48] [--targets 512 224] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from prepared_speed import QUICK_SIDES, SIDES, write_raw_jpegs
from results import report  # sibling module: benchmarks run as scripts

from fundus_lit.data.sources import read_rgb
from fundus_lit.data.transforms import ImagePipeline


def seconds_per_image(paths: list[Path], pipeline: ImagePipeline, target: int | None) -> float:
    t0 = time.perf_counter()
    for path in paths:
        pipeline(read_rgb(path, "benchmark", target=target))
    return (time.perf_counter() - t0) / len(paths)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=48, help="images")
    parser.add_argument("--targets", type=int, nargs="+", default=[512, 224])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="12 images, smaller, 1 round")
    args = parser.parse_args(argv)
    n, rounds, sides = (12, 1, QUICK_SIDES) if args.quick else (args.n, args.rounds, SIDES)
    torch.set_num_threads(1)
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        csv = write_raw_jpegs(Path(tmp), n, sides)
        paths = sorted(csv.parent.glob("camera/images/*.jpg"))
        print(f"drew {n} JPEGs in {time.perf_counter() - t0:.0f} s")
        for target in args.targets:
            pipeline = ImagePipeline(target)
            seconds_per_image(paths[:2], pipeline, None)  # warm the page cache
            full, draft = [], []
            for _ in range(rounds):
                full.append(seconds_per_image(paths, pipeline, None))
                draft.append(seconds_per_image(paths, pipeline, target))
            diffs, shrink = [], []
            for path in paths:
                reduced = read_rgb(path, "benchmark", target=target)
                whole = read_rgb(path, "benchmark")
                shrink.append(whole.width / reduced.width)
                a, b = pipeline(reduced).float(), pipeline(whole).float()
                diffs.append((a - b).abs().mean().item())
            results[target] = {
                "full": statistics.median(full),
                "draft": statistics.median(draft),
                "mad": float(np.mean(diffs)),
                "max_mad": float(np.max(diffs)),
                "scale": float(np.median(shrink)),
            }
    frames = ", ".join(f"{s * 3 // 2}x{s}" for s in sides)
    print(
        f"\ndraft vs full JPEG decode + pipeline, {n} images ({frames}), 1 process, "
        f"1 torch thread, median of {rounds} round(s)"
    )
    print(
        f"{'target':>7}{'full ms':>10}{'draft ms':>10}{'ratio':>8}{'scale':>7}"
        f"{'mean |diff|':>13}{'worst':>7}"
    )
    for target, r in results.items():
        print(
            f"{target:>7}{1000 * r['full']:>10.1f}{1000 * r['draft']:>10.1f}"
            f"{r['full'] / r['draft']:>7.2f}x{'1/' + format(r['scale'], '.0f'):>7}"
            f"{r['mad']:>13.2f}{r['max_mad']:>7.2f}"
        )
    print("ratio = full / draft time per image; scale = median decode scale; diff on uint8")
    for target, r in results.items():
        report(
            f"draft decode @{target}", r["full"] / r["draft"], "full / reduced-scale JPEG decode"
        )
    return results


if __name__ == "__main__":
    main()

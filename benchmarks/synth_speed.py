"""Synthetic fundus generator throughput against PNG decoding of the same images.

Absolute times on a shared machine are noise, so the number that matters is the ratio to a
baseline measured in the same run: decoding a PNG is what a real-data loader pays per image,
so ratio > 1 means the generator is cheaper than reading the equivalent dataset from disk.

    python benchmarks/synth_speed.py [--size 256] [--n 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image
from results import report  # sibling module: benchmarks run as scripts

from fundus_lit.synthetic import FundusSynth


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    synth = FundusSynth(seed=args.seed, size=args.size)
    synth.sample(0)  # build the per-size caches outside the timed loop
    t0 = time.perf_counter()
    images = [synth.sample(i).image for i in range(args.n)]
    gen_s = time.perf_counter() - t0

    blobs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    t0 = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape == (args.size, args.size, 3)
    dec_s = time.perf_counter() - t0

    gen, dec = _rate(args.n, gen_s), _rate(args.n, dec_s)
    print(f"synthetic fundus generator, {args.n} images at {args.size} px, single process")
    print(f"{'what':<28}{'images/s':>12}{'ms/image':>12}")
    print(f"{'generator (FundusSynth)':<28}{gen:>12.1f}{1000 / gen:>12.2f}")
    print(f"{'PNG decode (PIL, baseline)':<28}{dec:>12.1f}{1000 / dec:>12.2f}")
    print(f"{'ratio generator / decode':<28}{gen / dec:>12.2f}")
    report("synthetic generator", gen / dec, "images/s drawn / images/s PNG-decoded")
    return {"generator": gen, "png_decode": dec, "ratio": gen / dec}


if __name__ == "__main__":
    main()

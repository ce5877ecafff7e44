"""Run every benchmark and print one table of their headline ratios (``make bench``).

Each benchmark measures its baseline in the same run and reports a ratio, because absolute times
on a shared machine are noise. Each runs in its own process (fresh memory, no warm caches from
the previous one); its full output goes to ``--logs`` for the details behind each ratio.

    python benchmarks/suite.py            # full settings (about an hour on 2 CPU cores)
    python benchmarks/suite.py --quick    # smaller settings, minutes; ratios are noisier
    python benchmarks/suite.py --only retrieval overhead
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from results import parse

HERE = Path(__file__).resolve().parent

#: script -> arguments of the quick run (the full run uses each script's defaults)
BENCHMARKS: dict[str, list[str]] = {
    "overhead": ["--steps", "3", "--rounds", "2"],
    "synth_speed": ["--n", "40"],
    "prepared_speed": ["--quick"],
    "decode_speed": ["--quick"],
    "retrieval": ["--sizes", "5000"],
    "queue_cost": ["--queues", "0", "16384", "--steps", "3", "--rounds", "2"],
    "g2d_cost": ["--steps", "2", "--rounds", "2"],
    "grad_cache_memory": ["--quick"],
    "cpu_precision": ["--batches", "5"],
    "gpu_throughput": ["--quick"],
}
#: measured only where CUDA is present (on a CPU they would only smoke-test themselves)
GPU_ONLY = {"gpu_throughput"}


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller settings")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="a subset")
    parser.add_argument("--logs", default="bench_logs", help="folder of the full outputs")
    args = parser.parse_args(argv)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    cuda = not device().startswith("CPU")
    rows, failed = [], []
    for name, quick in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        if name in GPU_ONLY and not cuda:
            print(f"skipping {name}: no CUDA device", flush=True)
            continue
        script = HERE / f"{name}.py"
        command = [sys.executable, str(script), *(quick if args.quick else [])]
        print(f"running {name} ...", flush=True)
        start = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        (logs / f"{name}.txt").write_text(run.stdout + run.stderr, encoding="utf-8")
        reported = parse(run.stdout)
        if run.returncode != 0 or not reported:
            failed.append(name)
            print(f"  {name} failed (exit {run.returncode}); see {logs / name}.txt", flush=True)
        rows += [(name, r, seconds) for r in reported]
    print(f"\nbenchmarks on {device()}{' (quick settings)' if args.quick else ''}")
    width = max([len("benchmark"), *(len(r["name"]) for _, r, _ in rows)]) + 1
    meaning = max([len("what the ratio divides"), *(len(r["meaning"]) for _, r, _ in rows)]) + 2
    header = f"{'benchmark':<{width}}{'ratio':>8}  {'what the ratio divides':<{meaning}}"
    header += f"{'goal':<16}{'s':>5}"
    print(header)
    print("-" * len(header))
    for _script, r, seconds in rows:
        line = f"{r['name']:<{width}}{r['ratio']:>8.3f}  {r['meaning']:<{meaning}}"
        print(line + f"{r['goal']:<16}{seconds:>5.0f}")
    if failed:
        print(f"failed: {', '.join(failed)} (logs in {logs})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

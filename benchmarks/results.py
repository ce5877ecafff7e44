"""One machine-readable line per headline ratio, so `benchmarks/suite.py` can gather every
benchmark's figures into one table while each script stays runnable (and readable) on its own."""

from __future__ import annotations

import json

PREFIX = "BENCH "


def report(name: str, ratio: float, meaning: str, goal: str = "") -> None:
    """Print ``ratio`` (what ``meaning`` says it divides) under ``name``, with the goal if any."""
    line = {"name": name, "ratio": round(float(ratio), 4), "meaning": meaning, "goal": goal}
    print(PREFIX + json.dumps(line), flush=True)


def parse(output: str) -> list[dict]:
    """The reported lines of a benchmark's standard output."""
    return [
        json.loads(line[len(PREFIX) :]) for line in output.splitlines() if line.startswith(PREFIX)
    ]

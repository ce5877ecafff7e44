"""Time to accuracy on CPU: wall-clock until the demo's 9-class zero-shot ACA reaches 0.70.

Runs the demo's training command (``make demo``'s fit: FLAIR with the tiny and demo overlays), in
which :class:`fundus_lit.callbacks.AccuracyCurve` records the zero-shot ACA on the held-out
validation images after every epoch against training seconds (validation excluded) and steps.
Writes, under ``--out``:

* ``time_to_accuracy.json``: the curve, when the target was first reached, the fit's wall-clock,
  the command, commit, machine, CPU bf16 support, precision and date;
* ``time_to_accuracy.png``: ACA against seconds and against steps, with the first version of the
  demo (ACA 0.46 after about 7 minutes of training) marked for comparison.

With ``--baseline`` it also trains that first version for the same number of seconds and prints
the ratio of the two accuracies (a baseline measured in the same run, on the same machine).

    python benchmarks/time_to_accuracy.py              # about 8 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fundus_lit.core.provenance import commit, machine  # noqa: E402

DEMO = [
    "--config=recipes/flair.yaml",
    "--config=recipes/overlays/tiny.yaml",
    "--config=recipes/overlays/demo.yaml",
    "--trainer.enable_progress_bar=false",
]
# the first version of the demo, as README reported it: 9-class zero-shot ACA 0.46 after ~420 s
FIRST_VERSION = {"seconds": 420.0, "value": 0.46}


def fit(extra: list[str], save_dir: Path, name: str) -> tuple[Path, float]:
    """Run one fit in a subprocess; returns its run directory and wall-clock seconds."""
    save_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "fundus_lit",
        "fit",
        *extra,
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--trainer.logger.init_args.name={name}",
    ]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    run = max((save_dir / name).glob("version_*"), key=lambda p: p.stat().st_mtime)
    return run, wall


def figure(curve: dict, out: Path, baseline: dict | None) -> None:
    from fundus_lit.eval.report import curve_figure

    fig = curve_figure(curve["points"], "9-class zero-shot ACA", curve["target"])
    seconds_ax = fig.axes[0]
    seconds_ax.scatter(
        [FIRST_VERSION["seconds"]],
        [FIRST_VERSION["value"]],
        marker="x",
        color="red",
        zorder=3,
        label="first version of the demo",
    )
    if baseline:
        pts = baseline["points"]
        seconds_ax.plot(
            [p["seconds"] for p in pts],
            [p["value"] for p in pts],
            color="red",
            alpha=0.6,
            label="first version, same run",
        )
    seconds_ax.legend(fontsize=7, loc="lower right")
    hit = curve.get("reached")
    fig.suptitle(
        "demo time to accuracy, 2 CPU cores: "
        + (
            f"0.70 after {hit['seconds']:.0f} s (step {hit['step']})" if hit else "0.70 not reached"
        ),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--runs", type=Path, default=ROOT / "bench_logs" / "time_to_accuracy")
    ap.add_argument(
        "--precision",
        default="bf16-mixed",
        help="as make demo: bf16 where the CPU has it, else the CLI falls back to fp32",
    )
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also train the first version of the demo for as many seconds",
    )
    ap.add_argument("--suffix", default="", help="file name suffix, e.g. _avx2")
    args = ap.parse_args()
    extra = [*DEMO, f"--trainer.precision={args.precision}"]
    run, wall = fit(extra, args.runs, "demo")
    curve = json.loads((run / "accuracy_curve.json").read_text())
    baseline = None
    if args.baseline:
        old = [
            "--config=recipes/flair.yaml",
            "--config=recipes/overlays/tiny.yaml",
            "--trainer.enable_progress_bar=false",
            "--trainer.precision=32-true",
            "--trainer.callbacks+=fundus_lit.callbacks.AccuracyCurve",
            f"--trainer.max_time=00:00:{int(curve['train_seconds']) // 60:02d}:"
            f"{int(curve['train_seconds']) % 60:02d}",
        ]
        old_run, _ = fit(old, args.runs, "first_version")
        baseline = json.loads((old_run / "accuracy_curve.json").read_text())
    result = {
        "benchmark": "time_to_accuracy",
        "command": "python benchmarks/time_to_accuracy.py " + " ".join(sys.argv[1:]),
        "fit_command": "fundus-lit fit " + " ".join(extra),
        "commit": commit(ROOT),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "env": {
            k: os.environ[k]
            for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
            if k in os.environ
        },
        "precision": json.loads(json.dumps(_precision(run))),
        "fit_wall_seconds": round(wall, 1),
        "first_version": FIRST_VERSION,
        **curve,
    }
    if baseline:
        result["baseline_same_run"] = baseline
        last, old_last = curve["points"][-1]["value"], baseline["points"][-1]["value"]
        print(
            f"ratio: ACA after {curve['train_seconds']:.0f} s, demo / first version = "
            f"{last / old_last:.2f} ({last:.3f} / {old_last:.3f})"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"time_to_accuracy{args.suffix}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    figure(curve, stem.with_suffix(".png"), baseline)
    shutil.copy(run / "accuracy_curve.png", args.runs / f"last_run_curve{args.suffix}.png")
    hit = curve.get("reached")
    print(
        f"time to 9-class zero-shot ACA {curve['target']}: "
        + (f"{hit['seconds']:.0f} s (step {hit['step']})" if hit else "not reached")
        + f"; final {curve['points'][-1]['value']:.3f}; fit wall {wall:.0f} s"
    )
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")


def _precision(run: Path) -> str:
    """The precision that actually ran, from the run's saved config."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return str(cfg.get("trainer", {}).get("precision"))


if __name__ == "__main__":
    main()

"""What the CLI's CPU precision choice is worth: the demo's training step (tiny FLAIR, ResNet-18
at 128 px, frozen MiniLM, batch 32) in fp32, in bf16-mixed forced on, and in whatever the CLI
picks when the demo asks for bf16-mixed, all measured in the same run.

On a CPU with native bf16 the CLI keeps bf16 (ratio chosen/fp32 below 1); without it, bf16 is
emulated (ratio forced-bf16/fp32 far above 1) and the CLI falls back to fp32 (chosen/fp32 about
1). To see the second case on a CPU that has native bf16:

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cpu_precision.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from recipe_table import run_worker
from results import report

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

#: label -> (--trainer.precision, FUNDUS_LIT_CPU_BF16 or None for the CLI's own choice)
RUNS = {
    "fp32": ("32-true", None),
    "bf16 forced": ("bf16-mixed", "native"),
    "CLI choice for bf16-mixed": ("bf16-mixed", None),
}


def measure(precision: str, override: str | None, batches: int, root: Path) -> dict:
    """Median step time of the demo's fit (the first 3 steps warm up) in its own process."""
    args = [
        f"--config={RECIPES / 'flair.yaml'}",
        f"--config={RECIPES / 'overlays' / 'tiny.yaml'}",
        f"--trainer.precision={precision}",
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={batches}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        f"--trainer.default_root_dir={root}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "FUNDUS_LIT_CPU_BF16"}
    if override:
        env["FUNDUS_LIT_CPU_BF16"] = override
    result, stderr = run_worker(args, precision, env)
    chose = [x for x in stderr.splitlines() if x.startswith("fundus-lit: precision")]
    result["message"] = chose[-1] if chose else f"fundus-lit: precision {precision}"
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8, help="training steps per run")
    args = parser.parse_args(argv)
    env = {
        k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ
    }
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, env {env or 'unset'}")
    steps = {}
    with tempfile.TemporaryDirectory() as work:
        for label, (precision, override) in RUNS.items():
            r = measure(precision, override, args.batches, Path(work) / label.replace(" ", "_"))
            steps[label] = r["step"]
            print(f"{label:28s} {r['step'] * 1000:8.0f} ms/step   {r['message']}", flush=True)
    fp32 = steps["fp32"]
    report("bf16_forced_vs_fp32", steps["bf16 forced"] / fp32, "bf16-mixed step / fp32 step")
    report(
        "cli_choice_vs_fp32",
        steps["CLI choice for bf16-mixed"] / fp32,
        "step of the precision the CLI picks for bf16-mixed / fp32 step",
        "<= 1.1",
    )


if __name__ == "__main__":
    main()

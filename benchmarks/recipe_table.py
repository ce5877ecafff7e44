"""Measure every main recipe with its tiny overlays and write the table of recipes/README.md.

Per recipe: median training step time (the first steps, which warm caches and allocators, are
left out), peak memory (CUDA peak allocated on a GPU, peak resident set size of the process on
CPU) and the metric a short run reaches on the synthetic validation split (zero-shot accuracy of
the dual encoders, masked-token loss of text pretraining). Each recipe runs in its own process,
so one recipe's memory never counts against the next.

    python benchmarks/recipe_table.py                 # writes recipes/README.md
    python benchmarks/recipe_table.py --epochs 1 --out /tmp/table.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
OVERLAYS = RECIPES / "overlays"

sys.path.insert(0, str(ROOT))
from fundus_lit.core import compose  # noqa: E402  (the resolver the CLI and the tests use)

#: every main recipe (ablations are deltas of these), by name; each runs with one --config
TABLE: dict[str, Path] = {p.stem: p for p in compose.discover(RECIPES) if p.parent == RECIPES}


def text_only(name: str) -> bool:
    model = compose.resolve(TABLE[name]).config.get("model", {})
    return model.get("class_path") == "fundus_lit.TextPretrainModule"


WORKER = """
import json, resource, statistics, sys, time
import torch
from lightning.pytorch.callbacks import Callback
from fundus_lit.cli import cli_main

class Clock(Callback):
    def __init__(self):
        self.times, self.start = [], None
    def on_train_batch_start(self, trainer, module, batch, idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()
    def on_train_batch_end(self, trainer, module, outputs, batch, idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)

cli = cli_main(json.loads(sys.argv[1]), run=False)
clock = Clock()
cli.trainer.callbacks.append(clock)
cli.trainer.fit(cli.model, cli.datamodule)
logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
steady = clock.times[3:] or clock.times
peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print("RESULT " + json.dumps({"step": statistics.median(steady), "steps": len(clock.times),
                              "peak": peak, "logged": logged}))
"""


def measure(name: str, epochs: int, batches: int, root: Path) -> dict:
    args = [  # no subcommand: the worker builds the CLI with run=False and calls fit itself
        f"--config={TABLE[name]}",
        f"--config={OVERLAYS / 'tiny.yaml'}",  # the recipe declares what it needs with it
        f"--trainer.max_epochs={epochs}",
        f"--trainer.limit_train_batches={batches}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root / name}",
    ]
    if text_only(name):
        args.append(f"--model.init_args.save_dir={root / name / 'tower'}")
    start = time.perf_counter()
    result, _ = run_worker(args, name)
    result["wall"] = time.perf_counter() - start
    return result


def run_worker(args: list[str], name: str, env: dict | None = None) -> tuple[dict, str]:
    """(the worker's RESULT, its stderr): one timed fit of the CLI ``args`` in its own process."""
    env = (os.environ if env is None else env) | {
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    run = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(args)], capture_output=True, text=True, env=env
    )
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{run.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :]), run.stderr


def metric(name: str, logged: dict) -> str:
    if text_only(name):
        return f"val MLM loss {logged['val/mlm']:.2f}"
    return f"zero-shot ACA {logged['val/zeroshot/aca']:.3f}"


def where() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cores = len(os.sched_getaffinity(0))
    return f"CPU ({platform.processor() or platform.machine()}, {cores} cores), fp32"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(TABLE), choices=list(TABLE))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30, help="training batches per epoch")
    parser.add_argument("--out", default=str(RECIPES / "README.md"))
    parser.add_argument("--work", default="/tmp/fundus_lit_recipe_table")
    args = parser.parse_args(argv)
    rows = []
    for name in args.recipes:
        print(f"measuring {name} ...", flush=True)
        r = measure(name, args.epochs, args.batches, Path(args.work))
        rows.append((name, r))
        print(
            f"  {r['step'] * 1000:.0f} ms/step, peak {r['peak'] / 2**30:.2f} GiB, "
            f"{metric(name, r['logged'])}, {r['wall']:.0f} s",
            flush=True,
        )
    text = render(rows, args)
    out = Path(args.out)
    if out.exists():  # sections other benchmarks wrote below the table ("## ...") are kept
        old = out.read_text(encoding="utf-8")
        if "\n## " in old:
            text = text.rstrip("\n") + "\n" + old[old.index("\n## ") :]
    out.write_text(text, encoding="utf-8")
    print(text)


def render(rows: list[tuple[str, dict]], args: argparse.Namespace) -> str:
    lines = [
        "# Recipes: measured cost and what a short run reaches",
        "",
        f"Measured by `python benchmarks/recipe_table.py` on {where()}, "
        f"{time.strftime('%Y-%m-%d')}: each recipe with its tiny overlays (ResNet-18 at 128 px, "
        "frozen MiniLM, batch 32, in-memory synthetic data; plus what each recipe declares "
        "under `overlays: tiny:`), "
        f"{args.epochs} epochs of {args.batches} batches, one process per recipe. Step time is "
        "the median training step after the first three; peak memory is the process's peak "
        "resident set on CPU (CUDA peak allocated on a GPU); the metric is the synthetic "
        "validation split's after the run. These are tiny-overlay figures for comparing recipes "
        "with each other on one machine, not paper-scale numbers; the paper-scale settings are "
        "in each recipe's header.",
        "",
        "| recipe | step (ms) | vs flair | peak memory (GiB) | metric after the run |",
        "|---|---:|---:|---:|---|",
    ]
    base = dict(rows).get("flair", {}).get("step")
    for name, r in rows:
        ratio = f"{r['step'] / base:.2f}x" if base and not text_only(name) else ""
        lines.append(
            f"| `{name}` | {r['step'] * 1000:.0f} | {ratio} | {r['peak'] / 2**30:.2f} | "
            f"{metric(name, r['logged'])} |"
        )
    lines += [
        "",
        "Paper-scale step times and memory need a GPU run of the same script; none was "
        "available when this table was written.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

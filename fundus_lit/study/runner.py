"""Run every cell x seed of a study as an ordinary ``fundus-lit fit`` + ``evaluate``.

Each run is a subprocess of the same CLI a user types (its command line is logged next to the
run), so a study cell is exactly reproducible by hand and a crash in one run cannot corrupt the
state of the next. Resumption is by files on disk: a fit always starts with ``--ckpt_path last``
(no checkpoint yet means from scratch; a killed fit continues from its last checkpoint) and is
marked done only when it exits cleanly; each evaluation is marked done the same way. A rerun of
the study therefore skips finished runs and finishes partial ones.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fundus_lit.core.errors import DataError
from fundus_lit.study.spec import Cell, Scale, Study


@dataclass(frozen=True)
class Run:
    cell: Cell
    seed: int
    root: Path  # OUT/<cell>/seed<k>: the logger's folder; the run is its newest version_*

    @property
    def label(self) -> str:
        return f"{self.cell.name} seed {self.seed}"

    @property
    def log(self) -> Path:
        return self.root / "commands.log"

    def run_dir(self) -> Path | None:
        versions = sorted(self.root.glob("version_*"), key=lambda p: p.stat().st_mtime)
        return versions[-1] if versions else None

    def marker(self, step: str) -> Path:
        return self.root / f"{step}.done"

    def done(self, study: Study) -> bool:
        steps = ["fit"] + [f"eval_{e.name}" for e in study.evaluations]
        return all(self.marker(s).exists() for s in steps)


def plan(study: Study, out: Path, seeds: list[int]) -> list[Run]:
    """Runs in the order they execute: seed-major, so a partial study already has every cell at
    its first seeds (a fair comparison at any point) rather than all seeds of the first cells."""
    return [
        Run(cell, seed, out / cell.name / f"seed{seed}") for seed in seeds for cell in study.cells
    ]


def fit_command(study: Study, scale: Scale, run: Run) -> list[str]:
    configs = [run.cell.recipe, *scale.overlays]
    return [
        sys.executable,
        "-m",
        "fundus_lit",
        "fit",
        *[f"--config={c}" for c in configs],
        *scale.args,
        *run.cell.args,
        f"--seed_everything={run.seed}",
        f"--trainer.logger.init_args.save_dir={run.root.parent}",
        f"--trainer.logger.init_args.name={run.root.name}",
        "--trainer.enable_progress_bar=false",
        "--ckpt_path=last",
    ]


def evaluate_commands(study: Study, run_dir: Path) -> list[tuple[str, list[str]]]:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    commands = []
    for e in study.evaluations:
        cmd = [sys.executable, "-m", "fundus_lit", "evaluate", f"--ckpt={ckpt}"]
        cmd += [f"--config={e.config}", f"--tag={e.name}"]
        if e.tasks:
            cmd.append(f"--tasks={e.tasks}")
        commands.append((f"eval_{e.name}", cmd))
    return commands


def _execute(cmd: list[str], run: Run, what: str) -> None:
    run.root.mkdir(parents=True, exist_ok=True)
    with run.log.open("a", encoding="utf-8") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = run.log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        raise DataError(
            f"{run.label}: {what} failed (exit {code}); its output is in {run.log}. "
            f"Fix the cause and rerun the same ablate command: finished runs are kept.\n"
            + "\n".join(tail)
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def execute(study: Study, scale: Scale, runs: list[Run], say=print) -> None:
    """Run what is not done yet, printing cells done / total and the estimated time left (from
    the runs this invocation did whole: a resumed fit or a missing evaluation alone is shorter
    than a run and would make the estimate too small)."""
    total = len(runs)
    spent: list[float] = []
    for run in runs:
        done_before = sum(r.done(study) for r in runs)
        if run.done(study):
            continue
        left = total - done_before
        eta = f", about {_minutes(sum(spent) / len(spent) * left)} left" if spent else ""
        say(f"[{done_before}/{total} runs done{eta}] {run.label}", flush=True)
        start, whole = time.monotonic(), run.run_dir() is None
        ckpt = run.run_dir() and run.run_dir() / "checkpoints" / "last.ckpt"
        if run.marker("fit").exists() and not (ckpt and ckpt.exists()):
            run.marker("fit").unlink()  # restored from a mirror without its checkpoint: refit
        if not run.marker("fit").exists():
            resumed = run.run_dir() is not None
            say(f"  fit{' (resuming from its last checkpoint)' if resumed else ''} ...", flush=True)
            _execute(fit_command(study, scale, run), run, "fit")
            run.marker("fit").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        run_dir = run.run_dir()
        if run_dir is None or not (run_dir / "checkpoints" / "last.ckpt").exists():
            raise DataError(f"{run.label}: fit left no checkpoints/last.ckpt under {run.root}")
        for step, cmd in evaluate_commands(study, run_dir):
            if run.marker(step).exists():
                continue
            say(f"  evaluate {step[5:]} ...", flush=True)
            _execute(cmd, run, f"evaluate {step[5:]}")
            run.marker(step).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        took = time.monotonic() - start
        if whole:
            spent.append(took)
        say(f"  done in {_minutes(took)}", flush=True)
    say(f"[{sum(r.done(study) for r in runs)}/{total} runs done]", flush=True)


def results(run: Run) -> dict | None:
    """The run's eval.json, or None while it is not finished."""
    run_dir = run.run_dir()
    if run_dir is None or not (run_dir / "eval.json").exists():
        return None
    return json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))

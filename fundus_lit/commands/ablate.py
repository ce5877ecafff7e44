"""``fundus-lit ablate --study recipes/studies/NAME.yaml``: run a study's cells x seeds as ordinary
fit + evaluate runs (resumable), then write its comparison (study.md, study.json, one PNG per
metric, TensorBoard HParams).

A study is what turns "recipe B beats recipe A" from one lucky run into a claim with an interval:
every cell is paired with the baseline seed by seed and on the same test images.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from fundus_lit.core.errors import ConfigError
from fundus_lit.core.provenance import commit, machine, today
from fundus_lit.study import Scale, load_study
from fundus_lit.study.report import write_report
from fundus_lit.study.runner import evaluate_commands, execute, fit_command, plan


def build_parser() -> ArgumentParser:
    """Run an ablation study (cells x seeds, each an ordinary fit + evaluate) and compare every
    cell with the study's baseline: mean +- std over seeds and paired differences with 95%
    bootstrap intervals. Rerunning the same command skips finished runs and finishes partial
    ones."""
    parser = ArgumentParser(prog="fundus-lit ablate", description=build_parser.__doc__)
    parser.add_argument("--study", type=str, required=True, help="study file (recipes/studies/)")
    parser.add_argument(
        "--seeds", type=int | None, default=None, help="run seeds 0..N-1 instead of the file's"
    )
    parser.add_argument(
        "--out", type=str | None, default=None, help="output folder (default: studies/<name>)"
    )
    parser.add_argument(
        "--scale", type=str, default="bench", help="which of the file's scales (bench, paper)"
    )
    parser.add_argument(
        "--report_dir",
        type=str | None,
        default=None,
        help="write study.md/json and plots here instead of --out",
    )
    parser.add_argument(
        "--report_only", type=bool, default=False, help="only rewrite the report from finished runs"
    )
    parser.add_argument(
        "--print_commands", type=bool, default=False, help="print every command and exit"
    )
    return parser


def check_cells(study, scale: Scale, runs: list) -> None:
    """Parse every cell's fit command (``--print_config``) before anything trains, so a typo in a
    cell's args or an overlay that does not compose fails now, naming the cell, not hours in."""
    import contextlib
    import io

    from fundus_lit.commands.train import cli_main

    for run in runs:
        if run.seed != runs[0].seed:
            break  # the seed changes nothing that parses
        args = [a for a in fit_command(study, scale, run)[3:] if not a.startswith("--ckpt_path")]
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                cli_main([*args, "--print_config"])
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
        except Exception as error:  # noqa: BLE001 - reported with the cell's name below
            code, err = 2, io.StringIO(str(error))
        if code:
            raise ConfigError(
                f"{study.path}: cell {run.cell.name!r} does not parse:\n"
                + err.getvalue().strip()[-2000:]
            )


def run(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    study = load_study(args.study)
    if study.scales and args.scale not in study.scales:
        raise ConfigError(
            f"{args.study}: no scale {args.scale!r}; the file has {sorted(study.scales)}"
        )
    scale = study.scales.get(args.scale, Scale())
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = list(range(args.seeds)) if args.seeds is not None else list(study.seeds)
    out = Path(args.out or Path("studies") / study.name)
    runs = plan(study, out, seeds)
    if args.print_commands:
        for r in runs:
            print(f"# {r.label}")
            print(shlex.join(fit_command(study, scale, r)))
            for _, cmd in evaluate_commands(study, r.root / "version_N"):
                print(shlex.join(cmd))
        return
    print(
        f"study {study.name}: {len(study.cells)} cells x {len(seeds)} seeds at scale "
        f"{args.scale} -> {out}",
        flush=True,
    )
    if not args.report_only:
        check_cells(study, scale, runs)
        execute(study, scale, runs)
    info = machine()
    header = {
        "command": shlex.join(
            ["fundus-lit", "ablate", *(argv if argv is not None else sys.argv[2:])]
        ),
        "commit": commit(study.path),
        "machine": info,
        "machine_line": f"{info['gpu'] or info['cpu']}, {info['cores']} cores, "
        f"{'native' if info['native_bf16'] else 'no native'} CPU bf16, torch {info['torch']}",
        "date": today(),
        "scale": args.scale,
        "seeds": seeds,
    }
    report_dir = Path(args.report_dir) if args.report_dir else out
    written = write_report(study, runs, report_dir, header, hparams_dir=out / "hparams")
    for problem in written["problems"]:
        print(f"warning: saved predictions disagree with the reported ACA: {problem}")
    print(
        f"wrote {written['md']}, {written['json']}, {len(written['pictures'])} plots, "
        f"TensorBoard HParams in {out / 'hparams'} (tensorboard --logdir {out / 'hparams'})"
    )
    print(written["md"].read_text(encoding="utf-8"))

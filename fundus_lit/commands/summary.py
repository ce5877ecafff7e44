"""``fundus-lit summary RUN``: one compact table of what a run measured, and the pictures it wrote.

``evaluate`` writes every setting of every task (``eval.md``); after a demo or a sweep one wants
the headline of each: zero-shot and full-data probe ACA per evaluation tag, few-shot, retrieval,
how long training took and when the accuracy curve crossed its target.
"""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse import ArgumentParser

from fundus_lit.core.errors import DataError


def build_parser() -> ArgumentParser:
    """Print a compact table of a run's results (from eval.json and accuracy_curve.json) and the
    paths of the pictures in its directory."""
    parser = ArgumentParser(prog="fundus-lit summary", description=build_parser.__doc__)
    parser.add_argument("run", type=str, help="run directory (RUN, with RUN/eval.json)")
    return parser


def _mean(value) -> float | None:
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) else None


def _tag(section: str, task: str) -> str:
    rest = section[len(task) :].lstrip("_")
    return rest or "main"


def result_rows(results: dict) -> list[tuple[str, str, float]]:
    """(measure, evaluation tag, value) of the headline numbers of an ``eval.json``."""
    rows: list[tuple[str, str, float]] = []
    for section, result in results.items():
        if not isinstance(result, dict):
            continue
        if section.startswith("zeroshot") and _mean(result.get("aca")) is not None:
            rows.append(("zero-shot ACA", _tag(section, "zeroshot"), _mean(result["aca"])))
        elif section.startswith("probe"):
            for setting in ("100%", "10-shot", "1-shot"):
                value = _mean(result.get(setting, {}).get("aca"))
                if value is not None:
                    rows.append((f"linear probe ACA, {setting}", _tag(section, "probe"), value))
        elif section.startswith("fewshot"):
            for method, settings in result.items():
                value = (
                    _mean(settings.get("10-shot", {}).get("aca"))
                    if isinstance(settings, dict)
                    else None
                )
                if value is not None:
                    rows.append(
                        (f"few-shot {method} ACA, 10-shot", _tag(section, "fewshot"), value)
                    )
        elif section.startswith("retrieval"):
            for task, metrics in result.items():
                if isinstance(metrics, dict) and _mean(metrics.get("R@1")) is not None:
                    rows.append(
                        (f"retrieval {task} R@1", _tag(section, "retrieval"), _mean(metrics["R@1"]))
                    )
    return rows


def render(run: Path) -> str:
    """The summary text of a run directory."""
    eval_json, curve_json = run / "eval.json", run / "accuracy_curve.json"
    if not eval_json.is_file() and not curve_json.is_file():
        raise DataError(
            f"{run}: no eval.json or accuracy_curve.json; run `fundus-lit evaluate --ckpt "
            f"{run}/checkpoints/last.ckpt --config ...` first"
        )
    lines = [f"fundus-lit summary: {run}", ""]
    if eval_json.is_file():
        rows = result_rows(json.loads(eval_json.read_text()))
        width = max([len(m) for m, _, _ in rows] + [7])
        tags = max([len(t) for _, t, _ in rows] + [4])
        lines.append(f"  {'measure':<{width}}  {'eval':<{tags}}  value")
        lines += [f"  {m:<{width}}  {t:<{tags}}  {v:.3f}" for m, t, v in rows]
    if curve_json.is_file():
        curve = json.loads(curve_json.read_text())
        lines.append(f"  training time: {curve['train_seconds']:.0f} s (validation excluded)")
        hit, target = curve.get("reached"), curve.get("target")
        if target is not None:
            lines.append(
                f"  {curve['monitor']} >= {target:g}: "
                + (
                    f"step {hit['step']}, {hit['seconds']:.0f} s"
                    if hit
                    else f"not reached (last {curve['points'][-1]['value']:.3f})"
                )
            )
    pictures = sorted(run.glob("*.png"))
    if pictures:
        lines += ["", "pictures:", *(f"  {p}" for p in pictures)]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    folder = Path(args.run)
    if not folder.is_dir():
        raise DataError(f"run directory {folder} does not exist")
    print(render(folder))

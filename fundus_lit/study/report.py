"""A study's results: ``study.json`` (every value, with provenance), ``study.md`` (one table per
metric), one PNG per metric and TensorBoard's HParams view of the runs.

Only runs that finished count, and a cell is compared with the baseline on the seeds both have
finished, so a report of a partial study is still a paired, honest comparison (it says how many
runs it covers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from fundus_lit.study.runner import Run, results
from fundus_lit.study.spec import Study
from fundus_lit.study.stats import (
    balanced_accuracy,
    paired_difference,
    paired_difference_per_image,
    spread,
)


def lookup(result: dict, key: str):
    """The value of ``section/key/...`` in an eval.json (a probe's ``{mean, std}`` gives its mean),
    or None where the run did not measure it."""
    value = result
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) else None


def per_image(result: dict, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(targets, predictions) behind an ACA, where the evaluation saved them (zero-shot)."""
    parts = key.split("/")
    if parts[-1] != "aca" or len(parts) != 2:
        return None
    section = result.get(parts[0]) or {}
    if "targets" not in section or "predictions" not in section:
        return None
    return np.asarray(section["targets"]), np.asarray(section["predictions"])


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def _difference(
    key: str, entry: dict, ref: dict, finished: dict, name: str, reference: str, n_boot: int
) -> dict | None:
    """Paired difference of one cell to its reference on the seeds both finished: over seeds and
    test images where both saved per-image predictions of the same images, else over seeds."""
    common = [s for s in entry["seeds"] if s in ref["seeds"]]
    if not common:
        return None
    pairs = [
        (per_image(finished[(name, s)], key), per_image(finished[(reference, s)], key))
        for s in common
    ]
    targets = pairs[0][0][0] if pairs[0][0] is not None else None
    same_images = targets is not None and all(
        c is not None
        and r is not None
        and np.array_equal(c[0], targets)
        and np.array_equal(r[0], targets)
        for c, r in pairs
    )
    if same_images:
        diff = paired_difference_per_image(
            targets,
            np.stack([c[1] for c, _ in pairs]),
            np.stack([r[1] for _, r in pairs]),
            n_boot=n_boot,
        )
    else:
        values = [entry["values"][entry["seeds"].index(s)] for s in common]
        refs = [ref["values"][ref["seeds"].index(s)] for s in common]
        diff = paired_difference(values, refs, n_boot=n_boot)
    return {
        "mean": diff.mean,
        "low": diff.low,
        "high": diff.high,
        "seeds": diff.seeds,
        "resampled": "seeds and test images" if diff.per_image else "seeds",
    }


def compare(study: Study, runs: list[Run], n_boot: int = 2000) -> dict:
    """Per metric and cell: the seeds' values, mean +- std, and the paired difference to the
    baseline with its 95% bootstrap interval."""
    finished = {(r.cell.name, r.seed): results(r) for r in runs if r.done(study)}
    finished = {k: v for k, v in finished.items() if v is not None}
    out: dict = {}
    for metric in study.metrics:
        cells: dict = {}
        for cell in study.cells:
            seeds = sorted(s for (c, s) in finished if c == cell.name)
            values = {s: lookup(finished[(cell.name, s)], metric.key) for s in seeds}
            values = {s: v for s, v in values.items() if v is not None}
            entry: dict = {"seeds": list(values), "values": list(values.values())}
            if values:
                sp = spread(list(values.values()))
                entry |= {"mean": sp.mean, "std": sp.std, "n": sp.n}
            cells[cell.name] = entry
        differences = []
        for name, reference in study.comparisons:
            diff = _difference(
                metric.key, cells[name], cells[reference], finished, name, reference, n_boot
            )
            if diff is not None:
                differences.append({"cell": name, "reference": reference} | diff)
        out[metric.key] = {"label": metric.label, "cells": cells, "differences": differences}
    return out


def check_recomputed_aca(study: Study, runs: list[Run]) -> list[str]:
    """Runs whose saved predictions do not reproduce their reported ACA (should be none)."""
    problems = []
    for run in runs:
        result = results(run) if run.done(study) else None
        for metric in study.metrics if result else ():
            pair = per_image(result, metric.key)
            reported = lookup(result, metric.key)
            if pair is not None and reported is not None:
                again = float(balanced_accuracy(pair[0], pair[1][None])[0])
                if abs(again - reported) > 1e-4:
                    problems.append(f"{run.label} {metric.key}: {reported:.4f} vs {again:.4f}")
    return problems


def _fmt(entry: dict) -> str:
    if "mean" not in entry:
        return "-"
    return f"{entry['mean']:.3f} ± {entry['std']:.3f} (n={entry['n']})"


def _fmt_diff(d: dict) -> str:
    mark = " *" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{mark}"


def markdown(study: Study, table: dict, header: dict) -> str:
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += [
        f"- **Command:** `{header['command']}`",
        f"- **Commit:** {header['commit']}",
        f"- **Machine:** {header['machine_line']}",
        f"- **Date:** {header['date']}",
        f"- **Scale:** {header['scale']}; seeds {header['seeds']}; "
        f"{header['runs_done']}/{header['runs_total']} runs finished",
        f"- **Baseline:** `{study.baseline}`. Δ is the mean paired difference of a cell to its "
        "reference (same seed, same test images) with a 95% bootstrap interval; * marks an "
        "interval that excludes 0.",
        "",
    ]
    for key, block in table.items():
        lines += [f"## {block['label']}", "", f"`{key}`", ""]
        lines += ["| cell | mean ± std over seeds | per seed |", "|---|---|---|"]
        for cell in study.cells:
            entry = block["cells"][cell.name]
            per_seed = ", ".join(f"{v:.3f}" for v in entry["values"]) or "-"
            name = f"`{cell.name}`" + (" (baseline)" if cell.name == study.baseline else "")
            lines.append(f"| {name} | {_fmt(entry)} | {per_seed} |")
        lines += ["", "| comparison | Δ [95% CI] | seeds | resampled |", "|---|---|---|---|"]
        for d in block["differences"]:
            lines.append(
                f"| `{d['cell']}` − `{d['reference']}` | {_fmt_diff(d)} | {d['seeds']} "
                f"| {d['resampled']} |"
            )
        lines.append("")
    return "\n".join(lines)


def figure(study: Study, key: str, block: dict):
    """Left: each cell's seeds and mean +- std; right: each comparison's difference with its 95%
    interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in study.cells]
    diffs = block["differences"]
    rows = max(len(names), len(diffs), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * rows + 1.9))
    for y, name in enumerate(names):
        entry = block["cells"][name]
        if entry["values"]:
            left.scatter(entry["values"], [y] * len(entry["values"]), s=14, color="0.55", zorder=3)
            left.errorbar(entry["mean"], y, xerr=entry["std"], fmt="o", color="C0", capsize=4)
    for y, d in enumerate(diffs):
        err = [[d["mean"] - d["low"]], [d["high"] - d["mean"]]]
        color = "C2" if d["low"] > 0 else ("C3" if d["high"] < 0 else "C0")
        right.errorbar(d["mean"], y, xerr=err, fmt="o", color=color, capsize=4)
    right.axvline(0, color="0.4", lw=1, ls="--")
    left.set_yticks(range(len(names)), names)
    right.set_yticks(range(len(diffs)), [f"{d['cell']} − {d['reference']}" for d in diffs])
    for ax in (left, right):
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    left.set_xlabel(f"{block['label']} (mean ± std; dots: seeds)")
    right.set_xlabel("paired difference (95% bootstrap CI)")
    fig.suptitle(f"{study.name}: {block['label']}", fontsize=10)
    fig.tight_layout()
    return fig


def write_hparams(study: Study, runs: list[Run], root: Path) -> Path:
    """One TensorBoard run per finished cell x seed with its cell, seed and metrics, so the HParams
    tab lines the cells up (``tensorboard --logdir OUT/hparams``)."""
    from torch.utils.tensorboard import SummaryWriter

    for run in runs:
        result = results(run) if run.done(study) else None
        if result is None:
            continue
        metrics = {f"study/{m.key}": lookup(result, m.key) for m in study.metrics}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        folder = root / f"{run.cell.name}_seed{run.seed}"
        if folder.exists():
            for old in folder.glob("**/events.out.tfevents.*"):
                old.unlink()
        with SummaryWriter(str(folder)) as writer:
            writer.add_hparams({"cell": run.cell.name, "seed": run.seed}, metrics, run_name=".")
    return root


def write_report(
    study: Study, runs: list[Run], out: Path, header: dict, hparams_dir: Path | None = None
) -> dict:
    table = compare(study, runs)
    header = header | {
        "runs_done": sum(r.done(study) for r in runs),
        "runs_total": len(runs),
    }
    problems = check_recomputed_aca(study, runs)
    payload = {"study": study.name, **header, "baseline": study.baseline, "metrics": table}
    if problems:
        payload["inconsistent_predictions"] = problems
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (out / "study.md").write_text(markdown(study, table, header), encoding="utf-8")
    pictures = []
    for key, block in table.items():
        fig = figure(study, key, block)
        path = out / f"study_{_slug(key)}.png"
        fig.savefig(path, dpi=110)
        pictures.append(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
    write_hparams(study, runs, hparams_dir or out / "hparams")
    return {
        "json": out / "study.json",
        "md": out / "study.md",
        "pictures": pictures,
        "problems": problems,
    }

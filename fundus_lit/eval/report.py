"""Where evaluation results go: a JSON file, a markdown table, TensorBoard, confusion matrices
and per-class recall bars.

Results are nested dicts (task -> setting -> metric -> value or {mean, std}); these helpers only
flatten and render them, so every task shares one output format.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

HEADLINE = ("aca", "kappa", "f1", "auc")


def update_json(path: Path, sections: dict[str, dict]) -> None:
    """Write each section, keeping other sections already in the file (other tasks' runs)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def scalars(result: dict, prefix: str) -> Iterator[tuple[str, float]]:
    """Flatten a result into ``(tag, value)`` pairs; ``{mean, std}`` leaves give the mean."""
    for key, value in result.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, bool) or key in ("runs", "per_class_recall"):
            continue
        if isinstance(value, (int, float)):
            yield tag, float(value)
        elif isinstance(value, dict):
            if set(value) >= {"mean", "std"}:
                yield tag, float(value["mean"])
            else:
                yield from scalars(value, tag)


def _cell(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.4f} ± {value['std']:.4f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def settings_table(title: str, rows: dict[str, dict], metrics: Sequence[str]) -> list[str]:
    """One markdown table: a row per setting (``10-shot``, ``100%``, ``i2t``), a column per
    metric."""
    lines = [f"### {title}", "", "| setting | " + " | ".join(metrics) + " |"]
    lines.append("|---" * (len(metrics) + 1) + "|")
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(m)) for m in metrics) + " |")
    return [*lines, ""]


def markdown(results: dict[str, dict], title: str) -> str:
    """The markdown report of an ``evaluate`` run: one table per task."""
    lines = [f"# {title}", ""]
    if "zeroshot" in results:
        z = results["zeroshot"]
        lines += settings_table(f"zero-shot ({z['n']} test images)", {"zero-shot": z}, HEADLINE)
    if "probe" in results:
        p = results["probe"]
        rows = {k: v for k, v in p.items() if isinstance(v, dict) and "aca" in v}
        lines += settings_table(f"linear probe ({p.get('features', '')} features)", rows, HEADLINE)
    if "fewshot" in results:
        for method, settings in results["fewshot"].items():
            if isinstance(settings, dict):
                rows = {k: v for k, v in settings.items() if isinstance(v, dict) and "aca" in v}
                if "aca" in settings:
                    rows = {"zero-shot": settings}
                lines += settings_table(f"few-shot: {method}", rows, HEADLINE)
    if "segmentation" in results:
        seg = results["segmentation"]
        rows = {k: v for k, v in seg.items() if isinstance(v, dict)}
        title = f"segmentation ({seg['decoder']} decoder, {seg['n_test']} test images)"
        lines += settings_table(title, rows, ["dice", "dice_per_image", "n_train"])
    if "retrieval" in results:
        rows = {k: v for k, v in results["retrieval"].items() if isinstance(v, dict)}
        metrics = sorted(
            {m for row in rows.values() for m in row if m.startswith(("R@", "mAP@"))},
            key=lambda m: (m.split("@")[0] != "R", int(m.split("@")[1])),
        )
        lines += settings_table("retrieval", rows, [*metrics, "queries", "gallery"])
    return "\n".join(lines)


def confusion_matrix(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (targets, preds), 1)
    return cm


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str):
    """A matplotlib figure of a confusion matrix, rows normalised so rare classes stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.7 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    short = [c if len(c) <= 28 else c[:26] + "…" for c in classes]
    ax.set_xticks(range(k), short, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), short, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(k):
        for j in range(k):
            color = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return fig


def recall_figure(recall: dict[str, float | None], title: str):
    """Per-class recall as horizontal bars in class order (the confusion matrix's diagonal, read
    at a glance); a class without test images is marked ``no images``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(recall)
    values = [recall[n] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.35 * len(names) + 1.2)))
    rows = range(len(names))
    ax.barh(rows, values, color="#4a78b5")
    short = [n if len(n) <= 36 else n[:34] + "…" for n in names]
    ax.set_yticks(rows, short, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.08)
    ax.set_xlabel("recall")
    ax.set_title(title, fontsize=10)
    for row, name in enumerate(names):
        label = "no images" if recall[name] is None else f"{recall[name]:.2f}"
        ax.text(values[row] + 0.01, row, label, va="center", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def curve_figure(points: Sequence[dict], metric: str, target: float | None = None):
    """Two panels of one run's metric: against training seconds and against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    values = [p["value"] for p in points]
    for ax, key, label in ((axes[0], "seconds", "training seconds"), (axes[1], "step", "step")):
        ax.plot([p[key] for p in points], values, marker="o", markersize=3)
        if target is not None:
            ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    axes[0].set_ylim(0.0, 1.0)
    fig.tight_layout()
    return fig

"""The study file: what to run (cells x seeds at a scale) and what to compare (metrics of named
evaluations). Parsed and checked up front, so a typo fails before an hour of training, with the
file and key at fault.

Paths in a study file are relative to the file itself, like a recipe's ``base:``, so a study
runs from any working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fundus_lit.core.errors import ConfigError


@dataclass(frozen=True)
class Cell:
    """One arm of the study: a recipe plus the command-line overrides that make it this arm."""

    name: str
    recipe: Path
    args: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Evaluation:
    """One ``fundus-lit evaluate`` of every run; its name is the evaluation tag, so its sections
    in eval.json are ``<task>_<name>``."""

    name: str
    config: Path
    tasks: str | None = None


@dataclass(frozen=True)
class Metric:
    """A value of eval.json (``section/key/...``, e.g. ``zeroshot_unseen/aca``) to compare."""

    key: str
    label: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class Scale:
    """The overlays and overrides stacked on every cell's recipe at one scale (bench, paper)."""

    overlays: tuple[Path, ...] = ()
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    description: str
    baseline: str
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]
    evaluations: tuple[Evaluation, ...]
    metrics: tuple[Metric, ...]
    scales: dict[str, Scale] = field(default_factory=dict)
    #: (cell, reference) pairs to difference; default: every other cell against the baseline
    comparisons: tuple[tuple[str, str], ...] = ()

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)


def _require(data: dict, key: str, where: str):
    if key not in data or data[key] in (None, "", []):
        raise ConfigError(f"{where}: missing required key {key!r}")
    return data[key]


def _args(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(a, str) for a in value):
        raise ConfigError(f"{where}: expected a list of command-line strings, got {value!r}")
    return tuple(value)


def _file(base: Path, value: str, where: str) -> Path:
    path = (base / value).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}: {value!r} is not a file (looked for {path})")
    return path


KNOWN = {
    "study",
    "description",
    "baseline",
    "seeds",
    "cells",
    "evaluations",
    "metrics",
    "scales",
    "comparisons",
}


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every referenced recipe, overlay and config must exist."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = set(data) - KNOWN
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(KNOWN)}")
    base = path.parent
    cells = []
    for i, raw in enumerate(_require(data, "cells", str(path))):
        where = f"{path}: cells[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with name and recipe")
        name = str(_require(raw, "name", where))
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}: name {name!r} must be letters, digits, '_' or '-'")
        recipe = _file(base, _require(raw, "recipe", where), f"{where}.recipe")
        args = _args(raw.get("args"), f"{where}.args")
        cells.append(Cell(name, recipe, args, str(raw.get("description", ""))))
    names = [c.name for c in cells]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{path}: cell names repeat: {duplicated}")
    baseline = str(_require(data, "baseline", str(path)))
    if baseline not in names:
        raise ConfigError(f"{path}: baseline {baseline!r} is not a cell; cells are {names}")
    comparisons = []
    for i, raw in enumerate(data.get("comparisons") or []):
        where = f"{path}: comparisons[{i}]"
        if not isinstance(raw, dict) or set(raw) != {"cell", "reference"}:
            raise ConfigError(f"{where}: expected {{cell: NAME, reference: NAME}}, got {raw!r}")
        for key in ("cell", "reference"):
            if raw[key] not in names:
                raise ConfigError(f"{where}.{key}: {raw[key]!r} is not a cell; cells are {names}")
        comparisons.append((str(raw["cell"]), str(raw["reference"])))
    if not comparisons:
        comparisons = [(n, baseline) for n in names if n != baseline]
    evaluations = []
    for i, raw in enumerate(_require(data, "evaluations", str(path))):
        where = f"{path}: evaluations[{i}]"
        name = str(_require(raw, "name", where))
        config = _file(base, _require(raw, "config", where), f"{where}.config")
        tasks = raw.get("tasks")
        evaluations.append(Evaluation(name, config, None if tasks is None else str(tasks)))
    metrics = []
    for i, raw in enumerate(_require(data, "metrics", str(path))):
        where = f"{path}: metrics[{i}]"
        key = str(_require(raw, "key", where))
        section = key.split("/")[0]
        tags = [e.name for e in evaluations]
        if not any(section.endswith(f"_{t}") for t in tags):
            raise ConfigError(
                f"{where}: key {key!r} names no evaluation: its section must end in _<name> "
                f"of one of {tags} (e.g. zeroshot_{tags[0]}/aca)"
            )
        label = str(raw.get("label", key))
        metrics.append(Metric(key, label, bool(raw.get("higher_is_better", True))))
    scales = {}
    for name, raw in (data.get("scales") or {}).items():
        where = f"{path}: scales.{name}"
        raw = raw or {}
        overlays = tuple(_file(base, o, f"{where}.overlays") for o in raw.get("overlays") or ())
        scales[name] = Scale(overlays, _args(raw.get("args"), f"{where}.args"))
    seeds = data.get("seeds", [0, 1, 2])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a list of integers, got {seeds!r}")
    return Study(
        name=str(data.get("study") or path.stem),
        path=path.resolve(),
        description=str(data.get("description", "")),
        baseline=baseline,
        seeds=tuple(seeds),
        cells=tuple(cells),
        evaluations=tuple(evaluations),
        metrics=tuple(metrics),
        scales=scales,
        comparisons=tuple(comparisons),
    )

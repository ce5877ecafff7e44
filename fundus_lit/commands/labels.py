"""``fundus-lit labels``: run the report label extractor over a report CSV before training on it.

The extractor is only as good as the dictionary's coverage of a hospital's phrasing, so the verb
shows what it found (per-label counts by status, coverage) and what it could not map (the most
frequent unmapped phrases: candidates for aliases in a user knowledge file), and can write the
CSV back with a ``labels`` column for :class:`~fundus_lit.data.sources.reports.ReportCSVSource`.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser

from fundus_lit.core.errors import DataError
from fundus_lit.core.progress import add_quiet_flag, progress, set_quiet
from fundus_lit.data.labels import Extraction, LabelExtractor

_STATUSES = ("positive", "negated", "uncertain")


@dataclass
class LabelStats:
    """What the extractor made of a set of reports."""

    reports: int = 0
    empty: int = 0
    labelled: int = 0  # reports with at least one label in the multi-hot vector
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # label -> status -> reports
    unmapped: Counter[str] = field(default_factory=Counter)

    def add(self, report: str, found: Extraction, labels: tuple[float, ...]) -> None:
        self.reports += 1
        self.empty += not report.strip()
        self.labelled += any(labels)
        for status in _STATUSES:
            for name in getattr(found, status):
                self.counts.setdefault(name, Counter())[status] += 1
        self.unmapped.update(found.unmapped)


def build_parser() -> ArgumentParser:
    """Label a report CSV with the rule-based extractor: print per-label counts (positive,
    negated, uncertain), coverage and the most frequent unmapped phrases; --out writes the CSV
    with its 'labels' column filled."""
    parser = ArgumentParser(prog="fundus-lit labels", description=build_parser.__doc__)
    parser.add_argument("--reports", type=str, required=True, help="CSV with a 'report' column")
    parser.add_argument("--out", type=str | None, default=None, help="labelled CSV to write")
    parser.add_argument(
        "--labels",
        type=str | list[str] | None,
        default=None,
        help="label vocabulary, comma-separated (default: every dictionary category)",
    )
    parser.add_argument(
        "--knowledge",
        type=str | list[str] | None,
        default=None,
        help="extra knowledge YAML files, comma-separated",
    )
    parser.add_argument(
        "--uncertain",
        type=Literal["positive", "negative"],
        default="positive",
        help="whether uncertain findings are labels",
    )
    parser.add_argument("--top", type=int, default=20, help="unmapped phrases shown")
    add_quiet_flag(parser)
    return parser


def _names(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def read_reports(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a report CSV; only the ``report`` column is required here."""
    if not path.is_file():
        raise DataError(f"report CSV {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if "report" not in columns:
            raise DataError(f"{path}: missing column 'report'; found {columns}")
        return columns, list(reader)


def format_stats(stats: LabelStats, vocabulary: list[str], top: int) -> str:
    """The summary the verb prints: counts of labels that occur, most frequent first."""
    share = stats.labelled / stats.reports if stats.reports else 0.0
    lines = [
        f"reports: {stats.reports} ({stats.empty} empty)",
        f"coverage: {share:.1%} ({stats.labelled} of {stats.reports} reports with >= 1 label); "
        f"{stats.reports - stats.labelled} with no label",
    ]
    order = {name: i for i, name in enumerate(vocabulary)}
    names = sorted(stats.counts, key=lambda n: (-stats.counts[n]["positive"], order.get(n, 0)))
    if names:
        width = max(len("label"), *map(len, names))
        lines.append(f"{'label':<{width}}  {'positive':>8}  {'negated':>8}  {'uncertain':>9}")
        for name in names:
            c = stats.counts[name]
            lines.append(
                f"{name:<{width}}  {c['positive']:>8}  {c['negated']:>8}  {c['uncertain']:>9}"
            )
    frequent = stats.unmapped.most_common(top)
    lines.append(
        f"most frequent unmapped phrases ({len(frequent)} of {len(stats.unmapped)} distinct):"
    )
    lines += [f"{n:>6}  {phrase}" for phrase, n in frequent]
    return "\n".join(lines)


def write_labelled(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = columns if "labels" in columns else [*columns, "labels"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def run(args: list[str]) -> None:
    cfg = build_parser().parse_args(args)
    set_quiet(cfg.quiet)
    if cfg.top < 0:
        raise DataError(f"--top must be at least 0, got {cfg.top}")
    path = Path(cfg.reports).expanduser()
    columns, rows = read_reports(path)
    try:
        extractor = LabelExtractor(_names(cfg.labels), _names(cfg.knowledge), cfg.uncertain)
    except ValueError as err:  # unknown label or bad knowledge file
        raise DataError(f"fundus-lit labels: {err}") from err
    stats = LabelStats()
    replaced = 0
    for row in progress(rows, desc="labels", unit="report"):
        report = row.get("report") or ""
        found = extractor.extract(report)
        vector = extractor.vector(found)
        stats.add(report, found, vector)
        replaced += bool((row.get("labels") or "").strip())
        row["labels"] = repr([n for n, v in zip(extractor.vocabulary, vector) if v])
    print(f"{path}:")
    print(format_stats(stats, extractor.vocabulary, cfg.top))
    if cfg.out:
        out = Path(cfg.out).expanduser()
        write_labelled(out, columns, rows)
        note = f" (replacing {replaced} non-empty 'labels' cells)" if replaced else ""
        print(f"wrote {out}{note}")

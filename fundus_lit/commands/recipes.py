"""``fundus-lit recipes``: every recipe under a folder with its description, base and objectives,
read through the same resolver the trainer verbs use."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser

from fundus_lit.core import compose


def build_parser() -> ArgumentParser:
    """List the recipes (main recipes and ablations): each runs alone with
    `fundus-lit fit --config RECIPE` (add `--config recipes/overlays/tiny.yaml` to run anywhere)."""
    parser = ArgumentParser(prog="fundus-lit recipes", description=build_parser.__doc__)
    parser.add_argument(
        "--dir",
        type=str | None,
        default=None,
        help="recipe folder (default: recipes/ of the repository, else ./recipes)",
    )
    parser.add_argument(
        "--format",
        type=str,
        default="table",
        choices=["table", "markdown"],
        help="aligned text, or a markdown table",
    )
    return parser


def recipe_rows(folder: str | Path | None = None) -> list[dict]:
    """One row per recipe: path (relative to the folder's parent), description, base, objectives."""
    folder = Path(folder).resolve() if folder else compose.recipes_dir()
    rows = []
    for path in compose.discover(folder):
        resolved = compose.resolve(path)

        def rel(p: Path) -> str:
            return str(p.relative_to(folder.parent)) if p.is_relative_to(folder.parent) else str(p)

        rows.append(
            {
                "recipe": rel(path),
                "description": resolved.description or "",
                "base": ", ".join(rel(b) for b in resolved.bases),
                "objectives": ", ".join(resolved.objective_names),
            }
        )
    return rows


def render(rows: list[dict], fmt: str = "table") -> str:
    columns = ("recipe", "base", "objectives", "description")
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in rows:
            cells = [f"`{r[c]}`" if c in ("recipe", "base") and r[c] else r[c] for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns[:-1]}
    lines = ["  ".join([*(c.ljust(widths[c]) for c in columns[:-1]), columns[-1]])]
    for r in rows:
        lines.append("  ".join([*(r[c].ljust(widths[c]) for c in columns[:-1]), r[columns[-1]]]))
    return "\n".join(lines)


def run(args: list[str]) -> None:
    cfg = build_parser().parse_args(args)
    print(render(recipe_rows(cfg.dir), cfg.format))

"""``fundus-lit search``: the indexed cases most similar to a photograph."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from fundus_lit.core.errors import DataError
from fundus_lit.core.progress import add_quiet_flag, set_quiet


def build_parser() -> ArgumentParser:
    """Find the indexed cases most similar to a fundus photograph."""
    parser = ArgumentParser(prog="fundus-lit search", description=build_parser.__doc__)
    parser.add_argument("--index", type=str, required=True, help="directory from fundus-lit index")
    parser.add_argument("--image", type=str, required=True, help="query image")
    parser.add_argument("--k", type=int, default=10, help="number of cases")
    parser.add_argument("--grid", type=str | None, default=None, help="write a PNG grid here")
    parser.add_argument(
        "--ckpt", type=str | None, default=None, help="checkpoint (default: the index's own)"
    )
    add_quiet_flag(parser)
    return parser


def run(args: list[str]) -> None:
    from fundus_lit.eval.casesearch import format_hits, load_index, search, write_grid

    cfg = build_parser().parse_args(args)
    set_quiet(cfg.quiet)
    if cfg.k < 1:
        raise DataError(f"--k must be at least 1, got {cfg.k}")
    hits = search(load_index(cfg.index), cfg.image, cfg.k, cfg.ckpt)
    print(format_hits(hits))
    if cfg.grid:
        print(f"wrote {write_grid(cfg.image, hits, cfg.grid)}")

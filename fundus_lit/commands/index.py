"""``fundus-lit index``: embed a data split with a checkpoint into a case-search index."""

from __future__ import annotations

from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser


def build_parser() -> ArgumentParser:
    """Build a case-search index: embed every image of a data split with a checkpoint and save a
    FAISS index with each record's path and categories under --out. The config is an evaluation
    config (or any YAML with data:); its other sections are checked but not used."""
    from fundus_lit.core.progress import add_quiet_flag
    from fundus_lit.eval.config import add_evaluation_config

    parser = ArgumentParser(prog="fundus-lit index", description=build_parser.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="evaluation YAML with data:")
    parser.add_argument("--ckpt", type=str, required=True, help="PretrainModule checkpoint")
    parser.add_argument("--out", type=str, required=True, help="index directory")
    parser.add_argument("--split", type=Literal["train", "val", "test"], default="test")
    add_quiet_flag(parser)
    add_evaluation_config(parser)
    return parser


def run(args: list[str]) -> None:
    from fundus_lit.core.progress import set_quiet
    from fundus_lit.eval.casesearch import build_index
    from fundus_lit.eval.config import check_evaluation_config, require_data

    require_data(args, "index")
    parser = build_parser()
    cfg = parser.parse_args(args)
    set_quiet(cfg.quiet)
    check_evaluation_config(cfg)
    case_index = build_index(parser, cfg)
    print(f"indexed {len(case_index)} images of the {cfg.split} split into {cfg.out}")

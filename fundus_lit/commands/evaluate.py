"""``fundus-lit evaluate``: every evaluation task of an evaluation config on a checkpoint."""

from __future__ import annotations

from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser


def build_parser(prog: str = "fundus-lit evaluate") -> ArgumentParser:
    """Evaluate a trained checkpoint: zero-shot, linear probe, few-shot adapters and retrieval on
    the data of an evaluation config. Writes eval.json (a section per task), a markdown report,
    TensorBoard scalars, pictures (confusion matrices, the zero-shot per-class recall chart,
    retrieval examples framed green or red; PNG files and TensorBoard images) and the evaluated
    images' embeddings for TensorBoard's projector (--projector.max_points 0: none) into --out
    (the checkpoint's run directory by default)."""
    from fundus_lit.core.progress import add_quiet_flag
    from fundus_lit.eval.config import add_evaluation_config
    from fundus_lit.eval.projector import ProjectorOptions

    parser = ArgumentParser(prog=prog, description=build_parser.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="evaluation YAML")
    parser.add_argument(
        "--ckpt",
        type=str,
        required=True,
        help="PretrainModule checkpoint, or a model folder from fundus-lit export or import",
    )
    parser.add_argument(
        "--split", type=Literal["val", "test"], default="test", help="split evaluated"
    )
    parser.add_argument("--out", type=str | None, default=None, help="output directory")
    add_quiet_flag(parser)
    parser.add_class_arguments(ProjectorOptions, "projector")
    add_evaluation_config(parser)
    return parser


def run(args: list[str], parser: ArgumentParser | None = None) -> None:
    from fundus_lit.core.progress import set_quiet
    from fundus_lit.eval.config import require_data
    from fundus_lit.eval.evaluate import run_evaluate

    parser = parser or build_parser()
    require_data(args, parser.prog.removeprefix("fundus-lit "))
    cfg = parser.parse_args(args)
    set_quiet(cfg.quiet)
    run_evaluate(parser, cfg)

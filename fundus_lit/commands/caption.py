"""``fundus-lit caption``: caption photographs with a checkpoint's decoder
(:mod:`fundus_lit.captioning` rebuilds it)."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser

from fundus_lit.captioning import load_captioner
from fundus_lit.core.errors import DataError
from fundus_lit.data.sources import read_rgb
from fundus_lit.data.transforms import ImagePipeline


def build_parser() -> ArgumentParser:
    """Generate a caption for each fundus photograph with the caption decoder of a checkpoint
    trained with a generative term (KeepFIT v2). Prints one `path<TAB>caption` line per image."""
    parser = ArgumentParser(prog="fundus-lit caption", description=build_parser.__doc__)
    parser.add_argument("--ckpt", type=str, required=True, help="PretrainModule checkpoint")
    parser.add_argument("--image", type=str, nargs="+", required=True, help="image path(s)")
    parser.add_argument("--beams", type=int, default=1, help="1 = greedy, >1 = beam search")
    parser.add_argument("--max_new_tokens", type=int, default=60, help="caption length cap")
    parser.add_argument(
        "--length_penalty", type=float, default=1.0, help="beam score = log p / length**this"
    )
    parser.add_argument(
        "--crop_fov", type=bool, default=True, help="crop the black border as in training"
    )
    return parser


def run(args: list[str]) -> None:
    cfg = build_parser().parse_args(args)
    if cfg.beams < 1 or cfg.max_new_tokens < 1:
        raise DataError(
            f"--beams and --max_new_tokens must be >= 1, got {cfg.beams} and {cfg.max_new_tokens}"
        )
    captioner = load_captioner(cfg.ckpt)
    pipeline = ImagePipeline(captioner.image_size, cfg.crop_fov, None)
    images = [pipeline(read_rgb(Path(p), "--image")) for p in cfg.image]
    captions = captioner(images, cfg.beams, cfg.max_new_tokens, cfg.length_penalty)
    for path, text in zip(cfg.image, captions):
        print(f"{path}\t{text}")

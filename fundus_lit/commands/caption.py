"""``fundus-lit caption``: caption photographs with a checkpoint's decoder
(:mod:`fundus_lit.captioning` rebuilds it)."""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from fundus_lit.captioning import load_captioner
from fundus_lit.core.errors import DataError
from fundus_lit.core.progress import add_quiet_flag, progress, set_quiet
from fundus_lit.data.sources import read_rgb
from fundus_lit.data.transforms import ImagePipeline

#: images captioned at once: progress every few seconds, and bounded memory for long lists
CHUNK = 16


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
    add_quiet_flag(parser)
    return parser


def run(args: list[str]) -> None:
    cfg = build_parser().parse_args(args)
    set_quiet(cfg.quiet)
    if cfg.beams < 1 or cfg.max_new_tokens < 1:
        raise DataError(
            f"--beams and --max_new_tokens must be >= 1, got {cfg.beams} and {cfg.max_new_tokens}"
        )
    captioner = load_captioner(cfg.ckpt)
    pipeline = ImagePipeline(captioner.image_size, cfg.crop_fov, None)
    images = [pipeline(read_rgb(Path(p), "--image")) for p in cfg.image]  # a bad path stops here
    with progress(total=len(images), desc="caption", unit="img") as bar:
        for start in range(0, len(images), CHUNK):
            chunk = images[start : start + CHUNK]
            captions = captioner(chunk, cfg.beams, cfg.max_new_tokens, cfg.length_penalty)
            for path, text in zip(cfg.image[start : start + CHUNK], captions):
                bar.write(f"{path}\t{text}", file=sys.stdout)  # above the bar, not through it
            bar.update(len(chunk))

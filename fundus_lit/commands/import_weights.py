"""``fundus-lit import``: a published FLAIR or KeepFIT checkpoint as a fundus-lit model folder
(:func:`fundus_lit.published.import_published` writes it)."""

from __future__ import annotations

from typing import Literal

from jsonargparse import ArgumentParser

from fundus_lit.published import import_published


def build_parser() -> ArgumentParser:
    """Import a published checkpoint (FLAIR's flair_resnet.pth, or KeepFIT's) into a model
    folder laid out like fundus-lit export's: fundus_lit.load_pretrained, fundus-lit zeroshot /
    evaluate --ckpt DIR and fit --model.init_args.init_weights DIR take it. Nothing is
    downloaded: the text model's tokenizer comes from a local folder (--tokenizer)."""
    parser = ArgumentParser(prog="fundus-lit import", description=build_parser.__doc__)
    parser.add_argument(
        "--from",
        dest="source",
        type=Literal["flair", "keepfit"],
        required=True,
        help="who published the checkpoint: flair (jusiro/FLAIR) or keepfit (MM-Retinal)",
    )
    parser.add_argument(
        "path",
        type=str,
        help="the checkpoint: .pth state dict, .safetensors (hub variant) or a folder of either",
    )
    parser.add_argument("--out", type=str, required=True, help="model folder (created)")
    parser.add_argument(
        "--tokenizer",
        type=str | None,
        default=None,
        help="local folder of the text model (Bio_ClinicalBERT); without it, images only",
    )
    parser.add_argument(
        "--image_size", type=int, default=512, help="input size of the images (FLAIR: 512)"
    )
    return parser


def run(args: list[str]) -> None:
    cfg = build_parser().parse_args(args)
    out = import_published(cfg.source, cfg.path, cfg.out, cfg.tokenizer, cfg.image_size)
    text = "images and text" if cfg.tokenizer else "images only (no --tokenizer)"
    print(f"imported {cfg.source} checkpoint {cfg.path} to {out}: {text}")

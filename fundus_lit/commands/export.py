"""``fundus-lit export``: a training checkpoint as a self-contained model folder
(:func:`fundus_lit.export.export_checkpoint` writes it)."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from fundus_lit.export import export_checkpoint


def build_parser() -> ArgumentParser:
    """Export a training checkpoint as a self-contained model folder: model.safetensors (the
    dual encoder's weights), config.json, tokenizer/ and text_config/. Load it with
    fundus_lit.load_pretrained(DIR), without Lightning, the recipe or the original text model."""
    parser = ArgumentParser(prog="fundus-lit export", description=build_parser.__doc__)
    parser.add_argument("--ckpt", type=str, required=True, help="PretrainModule checkpoint")
    parser.add_argument("--out", type=str, required=True, help="export folder (created)")
    parser.add_argument(
        "--crop_fov",
        type=bool,
        default=True,
        help="training cropped images to the fundus aperture (data.crop_fov)",
    )
    return parser


def run(args: list[str]) -> None:
    cfg = build_parser().parse_args(args)
    out = export_checkpoint(cfg.ckpt, cfg.out, cfg.crop_fov)
    print(f"exported {cfg.ckpt} to {out}")

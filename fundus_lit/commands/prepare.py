"""``fundus-lit prepare``: write the pre-resized, field-of-view-cropped copy of a data config's
sources that training then reads through :class:`~fundus_lit.data.prepared.PreparedSource`.

The data config is the ``data:`` section every recipe and evaluation config already has, so the
sources are stated once; other top-level sections of the file (model, trainer, classes, ...) are
ignored, and a training recipe itself can be passed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from fundus_lit.core.errors import DataError
from fundus_lit.core.progress import add_quiet_flag, set_quiet
from fundus_lit.data.datamodule import FundusDataModule
from fundus_lit.data.prepared import PreparedSource, prepare

SPLITS = ("train", "val", "test", "expert")


def build_parser() -> ArgumentParser:
    """Prepare a data split for fast training: crop every image to the fundus field of view,
    resize its longer side to --size and store it as JPEG in sharded Arrow files under --out,
    with every record field. Re-running the same command resumes an interrupted run."""
    parser = ArgumentParser(prog="fundus-lit prepare", description=build_parser.__doc__)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML with data: (other sections are ignored)"
    )
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--size", type=int, default=512, help="longer side of stored images")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--shard_size", type=int, default=1000, help="records per shard file")
    parser.add_argument(
        "--split",
        type=Literal["train", "val", "test", "expert", "all"],
        default="train",
        help="sources prepared; all: every split that lists sources, one sub-folder each",
    )
    parser.add_argument(
        "--crop_fov",
        type=bool | None,
        default=None,
        help="crop the field of view first (default: the data config's crop_fov)",
    )
    parser.add_argument("--workers", type=int, default=0, help="image processes (0: in-process)")
    add_quiet_flag(parser)
    parser.add_argument(
        "--progress",
        type=bool | None,
        default=None,
        help="deprecated, use --quiet: --progress false is --quiet, --progress true the default",
    )
    parser.add_subclass_arguments(FundusDataModule, "data", required=True)
    return parser


def _only_data(args: list[str]) -> list[str]:
    """``--config FILE`` values reduced to their ``data:`` section: jsonargparse refuses keys
    it does not know, and a recipe's model and trainer sections are none of prepare's business.
    The section is passed inline, which jsonargparse reads as it reads the file."""
    out: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--config" or arg.startswith("--config="):
            value = arg.split("=", 1)[1] if "=" in arg else next(it, "")
            path = Path(value).expanduser()
            if path.is_file():
                try:
                    content = yaml.safe_load(path.read_text())
                except yaml.YAMLError as err:
                    raise DataError(f"cannot read config {path}: {err}") from err
                if isinstance(content, dict) and set(content) - {"data"}:
                    value = yaml.safe_dump({"data": content.get("data")}, sort_keys=False)
            out += ["--config", value]
        else:
            out.append(arg)
    return out


def snippet(prepared: dict[str, Path]) -> str:
    """The YAML that points a data config at the prepared folders."""
    lines = ["data:", "  init_args:"]
    for split, path in prepared.items():
        lines += [
            f"    {split}:",
            "      - class_path: fundus_lit.data.PreparedSource",
            f"        init_args: {{path: {path.resolve()}}}",
        ]
    return "\n".join(lines)


def run(args: list[str]) -> None:
    """``fundus-lit prepare --config DATA.yaml --out DIR [--size 512] [--split train|...|all]``."""
    parser = build_parser()
    cfg = parser.parse_args(_only_data(args))
    if cfg.progress is not None:
        print(
            "fundus-lit prepare: --progress is deprecated and will be removed; use --quiet "
            "(bars only draw when stderr is a terminal)",
            file=sys.stderr,
        )
    set_quiet(cfg.quiet or cfg.progress is False)
    data = parser.instantiate_classes(cfg).data
    sources = dict(data.sources) | {"expert": data.expert_sources}
    splits = [s for s in SPLITS if sources[s]] if cfg.split == "all" else [cfg.split]
    if not splits or not sources[splits[0]]:
        listed = ", ".join(s for s in SPLITS if sources[s])
        hint = ""
        if cfg.split == "val":
            hint = "; without val sources the validation records are drawn from train, so "
            hint += "preparing train covers them"
        raise DataError(f"the data config lists no {cfg.split} sources (it lists {listed}){hint}")
    crop_fov = data.crop_fov if cfg.crop_fov is None else cfg.crop_fov
    out = Path(cfg.out).expanduser()
    prepared: dict[str, Path] = {}
    for split in splits:
        prepared[split] = prepare(
            sources[split],
            out / split if cfg.split == "all" else out,
            size=cfg.size,
            crop_fov=crop_fov,
            quality=cfg.quality,
            shard_size=cfg.shard_size,
            workers=cfg.workers,
        )
        total = PreparedSource(str(prepared[split])).manifest["total"]
        print(f"prepared {total} images of the {split} split into {prepared[split]}")
    print(
        f"\nTo train on it (data.image_size <= {cfg.size}, crop_fov: {str(crop_fov).lower()}), "
        "put the prepared folders in place of the raw sources, e.g. with this YAML as a --config "
        "after the recipe:\n"
    )
    print(snippet(prepared))

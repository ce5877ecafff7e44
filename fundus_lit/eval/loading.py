"""Rebuild the dual encoder from a training checkpoint, for evaluation without the recipe."""

from __future__ import annotations

from pathlib import Path

from fundus_lit.core.checkpoint import check_keys, read_checkpoint
from fundus_lit.core.errors import DataError
from fundus_lit.models.dual_encoder import DualEncoder, DualEncoderConfig
from fundus_lit.models.saved import TOKENIZER, load_saved_encoder


def load_encoder(path: str | Path, ckpt: dict | None = None) -> tuple[DualEncoder, dict]:
    """The encoder weights of a PretrainModule checkpoint, or of an export folder (``fundus-lit
    export`` or ``import``), and its hyper-parameters.

    Towers are built from their configs (no pretrained download) and filled from the checkpoint;
    objective modules (decoders, momentum copies) are not needed for evaluation and are skipped.
    Pass ``ckpt`` when the caller has read the file already and needs more of it.
    """
    path = Path(path)
    if path.is_dir():
        return load_export(path)
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    hp = ckpt.get("hyper_parameters", {})
    if "vision" not in hp or "text" not in hp:
        raise DataError(f"checkpoint {path} was not written by fundus-lit's PretrainModule")
    encoder = DualEncoder.from_config(DualEncoderConfig.from_dict(hp).for_saved_weights())
    prefix = "encoder."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    check_keys(
        f"checkpoint {path}",
        "the encoder its hyper-parameters describe",
        encoder.state_dict(),
        state,
    )
    encoder.load_state_dict(state)
    encoder.eval()
    return encoder, hp


def load_export(folder: Path) -> tuple[DualEncoder, dict]:
    """An export folder's encoder, with hyper-parameters shaped like a checkpoint's: the text
    model named by the export's tokenizer folder, and its image preparation."""
    encoder, config = load_saved_encoder(folder)
    tokenizer = folder / TOKENIZER
    if not tokenizer.is_dir():
        raise DataError(
            f"{folder} holds no tokenizer/ (imported without --tokenizer): its images can be "
            "embedded (fundus_lit.load_pretrained), but evaluation also embeds text; re-run "
            "fundus-lit import with --tokenizer DIR"
        )
    hp = config | {"text": config["text"] | {"name": str(tokenizer)}}
    return encoder, hp


def instantiate_for_model(parser, cfg, hp: dict):
    """Instantiate an evaluation config whose ``data`` must prepare images and texts the way the
    checkpoint's model expects: its tokenizer, text length and image size win over the config's,
    and so does an export's image preparation (an imported FLAIR model: no field-of-view crop,
    FLAIR's resize)."""
    cfg.data.init_args.tokenizer = hp["text"]["name"]
    cfg.data.init_args.max_length = hp["text"]["max_length"]
    cfg.data.init_args.image_size = hp["image_size"]
    preprocessing = hp.get("preprocessing", {})
    if "crop_fov" in preprocessing:
        cfg.data.init_args.crop_fov = bool(preprocessing["crop_fov"])
    if "resize" in preprocessing:
        cfg.data.init_args.resize = preprocessing["resize"]
    return parser.instantiate_classes(cfg)

"""The export folder format (``fundus-lit export``, ``fundus-lit import``): what it holds, and
the dual encoder rebuilt from it.

An export folder is self-contained: ``model.safetensors`` (the dual encoder's weights, read
without unpickling), ``config.json`` (what rebuilds the towers, and how images are prepared),
``text_config/`` (the text model's transformers config) and ``tokenizer/``. Training (initial
weights), evaluation and ``load_pretrained`` all read it through :func:`load_saved_encoder`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fundus_lit.core.checkpoint import check_keys
from fundus_lit.core.errors import DataError
from fundus_lit.core.version import __version__
from fundus_lit.models.dual_encoder import DualEncoder, DualEncoderConfig

FORMAT = "fundus-lit-dual-encoder"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
TEXT_CONFIG = "text_config"
#: What an export folder must hold, relative to it (checked before anything is built).
REQUIRED = (CONFIG, WEIGHTS, f"{TEXT_CONFIG}/config.json")
#: ``tokenizer/`` is required too, unless the config says ``"tokenizer": false``: a model
#: imported without its tokenizer (``fundus-lit import`` without ``--tokenizer``) embeds images,
#: and its text side says what is missing.


def read_export_config(folder: Path) -> dict:
    """The export's ``config.json``, after checking that every file of the format is there."""
    if folder.is_file():
        raise DataError(
            f"{folder} is a file; load_pretrained reads the folder that fundus-lit export "
            f"writes from a training checkpoint: fundus-lit export --ckpt {folder} --out DIR, "
            "then load_pretrained(DIR)"
        )
    if not folder.is_dir():
        raise DataError(
            f"exported model {folder} is not a folder (write one with fundus-lit export from a "
            "checkpoint, or with fundus-lit import from published FLAIR or KeepFIT weights)"
        )
    for name in REQUIRED:
        path = folder / name
        if not (path.is_dir() if name.endswith("/") else path.is_file()):
            raise DataError(
                f"exported model {folder} is incomplete: {path} is missing "
                "(re-run fundus-lit export)"
            )
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DataError(f"{path} is not the config of a fundus-lit export (format {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(
            f"{path} has format_version {version!r}; this fundus-lit reads up to "
            f"{FORMAT_VERSION} (upgrade fundus-lit)"
        )
    missing = [k for k in ("vision", "text", "embed_dim", "image_size") if k not in config]
    if missing:
        raise DataError(f"{path} lacks {missing}")
    if config.get("tokenizer", True) and not (folder / TOKENIZER).is_dir():
        raise DataError(
            f"exported model {folder} is incomplete: {folder / TOKENIZER} is missing "
            "(re-run fundus-lit export)"
        )
    return config


def saved_encoder_config(folder: Path, config: dict) -> DualEncoderConfig:
    """The export's encoder config with every download and external file switched off; the
    text model comes from the export's own ``text_config/``."""
    try:
        encoder = DualEncoderConfig.from_dict(config)
    except TypeError as err:
        raise DataError(f"{folder / CONFIG}: bad tower config: {err}") from err
    return encoder.for_saved_weights(text_name=str(folder / TEXT_CONFIG))


def load_weights(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file (never a pickle: loading cannot run code)."""
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"cannot read weights {path}: {err}") from err


def load_saved_encoder(folder: Path) -> tuple[DualEncoder, dict]:
    """The dual encoder of export folder ``folder`` (weights checked key by key against the
    architecture its config describes) and the config, in eval mode on the CPU."""
    config = read_export_config(folder)
    encoder = DualEncoder.from_config(saved_encoder_config(folder, config))
    _fill(encoder, folder, f"the encoder {folder / CONFIG} describes")
    return encoder.eval(), config


def load_export_weights(encoder: DualEncoder, folder: str | Path) -> None:
    """Fill ``encoder`` with an export folder's weights (initial weights for training); every key
    and shape must match, so a folder of another architecture is refused by name."""
    folder = Path(folder)
    read_export_config(folder)
    _fill(encoder, folder, "the model the config describes")


def _fill(encoder: DualEncoder, folder: Path, described_by: str) -> None:
    weights = folder / WEIGHTS
    state = load_weights(weights)
    check_keys(f"weights {weights}", described_by, encoder.state_dict(), state)
    encoder.load_state_dict(state)


def plain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies: safetensors refuses tensors that share memory (tied weights) or
    are views, so each tensor gets its own storage."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def folder_config(encoder: DualEncoderConfig, preprocessing: dict, **source: object) -> dict:
    """The ``config.json`` of a model folder: the format, what the folder came from
    (``source``), the encoder config with every download off and the text model redirected to
    the folder's own ``text_config/``, and how images are prepared."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fundus_lit_version": __version__,
        **source,
        **encoder.for_saved_weights(text_name=TEXT_CONFIG).to_dict(),
        "preprocessing": preprocessing,
    }


def write_model_folder(out: Path, state: dict[str, Tensor], config: dict) -> None:
    """Write a model folder's weights (safetensors) and ``config.json``; the caller writes
    ``text_config/`` and ``tokenizer/``."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(plain_state(state), str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

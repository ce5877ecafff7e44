"""Turn a training checkpoint into a self-contained model folder (``fundus-lit export``).

A Lightning checkpoint is a pickle holding optimiser state, objective modules and hyper-parameters
that name the training machine's text-model folder. The export keeps what inference needs, in
formats that load without running code: the dual encoder's weights as safetensors, a JSON config
that rebuilds it with every download switched off, the tokenizer, and the text model's
transformers config. :func:`fundus_lit.load_pretrained` reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from fundus_lit.core.checkpoint import read_checkpoint
from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.core.version import __version__
from fundus_lit.eval.loading import load_encoder
from fundus_lit.models.dual_encoder import DualEncoderConfig
from fundus_lit.models.saved import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    TEXT_CONFIG,
    TOKENIZER,
    WEIGHTS,
)


def plain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies: safetensors refuses tensors that share memory (tied weights) or
    are views, so each tensor gets its own storage."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def export_config(hp: dict, ckpt: Path, crop_fov: bool) -> dict:
    """The ``config.json`` of an export: the tower configs as the checkpoint trained them, with
    pretrained downloads, local weight files and compilation switched off (the weights are in the
    export; the using machine may lack a compiler), and the text model redirected to the
    export's own folder (the original reference is kept as ``source_text_model``)."""
    encoder = DualEncoderConfig.from_dict(hp).for_saved_weights(text_name=TEXT_CONFIG)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fundus_lit_version": __version__,
        "source_checkpoint": ckpt.name,
        "source_text_model": hp["text"]["name"],
        **encoder.to_dict(),
        "preprocessing": {"crop_fov": crop_fov, "image_size": encoder.image_size},
    }


def export_checkpoint(ckpt: str | Path, out: str | Path, crop_fov: bool = True) -> Path:
    """Write the export folder ``out`` of PretrainModule checkpoint ``ckpt`` and return it.

    Runs where the checkpoint was trained (or wherever its text model reference resolves): the
    tokenizer and text config are copied from there, so the export no longer needs it.
    ``crop_fov`` records whether training images were cropped to the fundus aperture.
    """
    ckpt, out = Path(ckpt), Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"export folder {out} exists and is not a folder")
    data = read_checkpoint(ckpt)
    encoder, hp = load_encoder(ckpt, data)
    tokenizer = load_tokenizer(hp["text"]["name"], hp["text"].get("trust_remote_code", False))
    out.mkdir(parents=True, exist_ok=True)
    save_file(plain_state(encoder.state_dict()), str(out / WEIGHTS), metadata={"format": "pt"})
    encoder.text.model.config.save_pretrained(out / TEXT_CONFIG)
    tokenizer.save_pretrained(out / TOKENIZER)
    config = export_config(hp, ckpt, crop_fov)
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out

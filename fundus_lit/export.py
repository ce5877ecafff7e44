"""Turn a training checkpoint into a self-contained model folder (``fundus-lit export``).

A Lightning checkpoint is a pickle holding optimiser state, objective modules and hyper-parameters
that name the training machine's text-model folder. The export keeps what inference needs, in
formats that load without running code: the dual encoder's weights as safetensors, a JSON config
that rebuilds it with every download switched off, the tokenizer, and the text model's
transformers config. :func:`fundus_lit.load_pretrained` reads it back.
"""

from __future__ import annotations

from pathlib import Path

from fundus_lit.core.checkpoint import read_checkpoint
from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.eval.loading import load_encoder
from fundus_lit.models.dual_encoder import DualEncoderConfig
from fundus_lit.models.saved import TEXT_CONFIG, TOKENIZER, folder_config, write_model_folder


def export_config(hp: dict, ckpt: Path, crop_fov: bool) -> dict:
    """The ``config.json`` of an export: the tower configs as the checkpoint trained them, with
    pretrained downloads, local weight files and compilation switched off (the weights are in the
    export; the using machine may lack a compiler), and the text model redirected to the
    export's own folder (the original reference is kept as ``source_text_model``)."""
    encoder = DualEncoderConfig.from_dict(hp)
    return folder_config(
        encoder,
        {"crop_fov": crop_fov, "image_size": encoder.image_size},
        source_checkpoint=ckpt.name,
        source_text_model=hp["text"]["name"],
    )


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
    write_model_folder(out, encoder.state_dict(), export_config(hp, ckpt, crop_fov))
    encoder.text.model.config.save_pretrained(out / TEXT_CONFIG)
    tokenizer.save_pretrained(out / TOKENIZER)
    return out

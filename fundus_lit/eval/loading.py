"""Rebuild the dual encoder from a training checkpoint, for evaluation without the recipe."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from fundus_lit.data.errors import DataError
from fundus_lit.models.dual_encoder import DualEncoder
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig


def load_encoder(path: str | Path) -> tuple[DualEncoder, dict]:
    """The encoder weights of a PretrainModule checkpoint and its hyper-parameters.

    Towers are built from their configs (no pretrained download) and filled from the checkpoint;
    objective modules (decoders, momentum copies) are not needed for evaluation and are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    if "vision" not in hp or "text" not in hp:
        raise DataError(f"checkpoint {path} was not written by fundus-lit's PretrainModule")
    vision = replace(VisionConfig(**hp["vision"]), pretrained=False, weights=None)
    text = replace(TextConfig(**hp["text"]), pretrained=False)
    encoder = DualEncoder(
        vision, text, hp["embed_dim"], hp["image_size"], hp["projection"], hp["temperature"]
    )
    prefix = "encoder."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    encoder.load_state_dict(state)
    encoder.eval()
    return encoder, hp

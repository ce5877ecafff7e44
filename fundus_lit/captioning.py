"""Rebuild a KeepFIT v2 checkpoint's caption decoder to describe fundus photographs.

Everything is rebuilt from the checkpoint alone: the image tower from the module's
hyper-parameters, the caption decoder from the configuration it stores in its own state dict,
and the tokenizer from the text tower's name (stage 1 keeps stage 0's base tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from fundus_lit.core.checkpoint import read_checkpoint
from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.eval.features import default_device
from fundus_lit.eval.loading import load_encoder
from fundus_lit.models.captioner import CaptionDecoder, decode
from fundus_lit.models.dual_encoder import DualEncoder

EXTRA_STATE = "_extra_state"


@dataclass
class Captioner:
    """A checkpoint's image tower, caption decoder and tokenizer, ready to generate."""

    encoder: DualEncoder
    decoder: CaptionDecoder
    tokenizer: PreTrainedTokenizerBase
    image_size: int

    @torch.no_grad()
    def __call__(
        self,
        images: list[torch.Tensor],
        beams: int = 1,
        max_new_tokens: int = 60,
        length_penalty: float = 1.0,
    ) -> list[str]:
        """Captions of preprocessed (3, S, S) uint8 images; greedy for one beam."""
        device = next(self.decoder.parameters()).device
        pixels = torch.stack(images).to(device)
        feature_map = self.encoder.vision(pixels, dense=True)["feature_map"]
        ids = self.decoder.generate(feature_map.float(), max_new_tokens, beams, length_penalty)
        return decode(self.tokenizer, ids)


def decoder_state(state_dict: dict, where: str) -> dict:
    """The first caption decoder's weights (prefix stripped), found by its stored config."""
    for key, value in state_dict.items():
        stored = value if isinstance(value, dict) else {}
        if key.endswith(EXTRA_STATE) and stored.get("kind") == "caption_decoder":
            prefix = key[: -len(EXTRA_STATE)]
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    raise DataError(
        f"{where} has no caption decoder: train with a recipe that has a CaptionObjective "
        "(recipes/keepfit_v2.yaml) to caption images"
    )


def load_captioner(path: str | Path, device: torch.device | None = None) -> Captioner:
    ckpt = read_checkpoint(path)
    state = decoder_state(ckpt.get("state_dict", {}), f"checkpoint {path}")
    encoder, hp = load_encoder(path, ckpt)
    decoder = CaptionDecoder.from_state_dict(state)
    device = device or default_device()
    tokenizer = load_tokenizer(hp["text"]["name"], hp["text"].get("trust_remote_code", False))
    return Captioner(encoder.to(device).eval(), decoder.to(device), tokenizer, hp["image_size"])

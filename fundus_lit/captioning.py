"""``fundus-lit caption``: describe fundus photographs with a KeepFIT v2 checkpoint's decoder.

Everything is rebuilt from the checkpoint alone: the image tower from the module's
hyper-parameters, the caption decoder from the configuration it stores in its own state dict,
and the tokenizer from the text tower's name (stage 1 keeps stage 0's base tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from transformers import PreTrainedTokenizerBase

from fundus_lit.core.checkpoint import read_checkpoint
from fundus_lit.data.errors import DataError
from fundus_lit.data.sources import read_rgb
from fundus_lit.data.transforms import ImagePipeline
from fundus_lit.eval.features import default_device
from fundus_lit.eval.loading import load_encoder
from fundus_lit.models.captioner import CaptionDecoder, decode
from fundus_lit.models.dual_encoder import DualEncoder
from fundus_lit.models.text import load_tokenizer

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


def caption_parser() -> ArgumentParser:
    """Generate a caption for each fundus photograph with the caption decoder of a checkpoint
    trained with a generative term (KeepFIT v2). Prints one `path<TAB>caption` line per image."""
    parser = ArgumentParser(prog="fundus-lit caption", description=caption_parser.__doc__)
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
    return parser


def caption_command(args: list[str]) -> None:
    cfg = caption_parser().parse_args(args)
    if cfg.beams < 1 or cfg.max_new_tokens < 1:
        raise DataError(
            f"--beams and --max_new_tokens must be >= 1, got {cfg.beams} and {cfg.max_new_tokens}"
        )
    captioner = load_captioner(cfg.ckpt)
    pipeline = ImagePipeline(captioner.image_size, cfg.crop_fov, None)
    images = [pipeline(read_rgb(Path(p), "--image")) for p in cfg.image]
    captions = captioner(images, cfg.beams, cfg.max_new_tokens, cfg.length_penalty)
    for path, text in zip(cfg.image, captions):
        print(f"{path}\t{text}")

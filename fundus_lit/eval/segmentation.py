"""Dense transfer evaluation: train a segmentation decoder on a frozen pretrained encoder with a
fraction of the lesion masks, report Dice on the test split.

This is how G2D-style pretraining is judged: the better the dense features, the less labelled
masks a decoder needs. The decoder is fresh, or the one pseudo-segmentation pretraining left in
the checkpoint.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fundus_lit.core.dice import dice_bce_loss
from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources import Source
from fundus_lit.data.transforms import fov_bbox, pad_resize
from fundus_lit.eval.features import default_device
from fundus_lit.models.decoders import build_decoder, feature_channels_and_strides
from fundus_lit.models.dual_encoder import DualEncoder

logger = logging.getLogger(__name__)
Items = list[tuple[Source, FundusRecord]]


@dataclass
class SegmentationConfig:
    """Dense transfer settings.

    Args:
        fractions: Fractions of the training split's masks to train with (stratification does
            not apply: masks are per pixel); each fraction is a seeded draw.
        decoder: ``fresh`` (built for the backbone) or ``pretrained`` (the checkpoint's
            pseudo-segmentation decoder, its output layer re-initialised to one channel).
        epochs: Passes over the training subset (at least ``min_steps`` optimiser steps).
        min_steps: Lower bound on the steps, so a 1 % subset is still trained.
        lr: AdamW learning rate of the decoder.
        batch_size: Images per step.
        seed: Seed of the subset draw and the decoder initialisation.
    """

    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    decoder: Literal["fresh", "pretrained"] = "fresh"
    epochs: int = 10
    min_steps: int = 20
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0


def pad_resize_mask(mask: Image.Image, size: int) -> Image.Image:
    """The mask twin of :func:`pad_resize`: nearest resampling keeps it binary."""
    scale = size / max(mask.width, mask.height)
    w, h = max(1, round(mask.width * scale)), max(1, round(mask.height * scale))
    if (w, h) != mask.size:
        mask = mask.resize((w, h), Image.Resampling.NEAREST)
    canvas = Image.new("L", (size, size))
    canvas.paste(mask, ((size - w) // 2, (size - h) // 2))
    return canvas


class MaskDataset(Dataset):
    """Images and masks with the same geometry (FOV crop box of the image, square pad-resize)."""

    def __init__(self, items: Items, size: int, crop_fov: bool) -> None:
        self.items, self.size, self.crop_fov = items, size, crop_fov

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        source, record = self.items[i]
        image, mask = source.open_image(record), source.open_mask(record)
        if mask.size != image.size:
            raise DataError(
                f"mask of {record.image} is {mask.size[0]}x{mask.size[1]} but the image is "
                f"{image.size[0]}x{image.size[1]} ({record.origin})"
            )
        box = fov_bbox(image) if self.crop_fov else None
        if box:
            image, mask = image.crop(box), mask.crop(box)
        pixels = torch.from_numpy(np.asarray(pad_resize(image, self.size))).permute(2, 0, 1)
        target = torch.from_numpy(np.asarray(pad_resize_mask(mask, self.size)) > 0)
        return pixels.contiguous(), target[None].float()


def pretrained_decoder_state(checkpoint: dict) -> dict[str, Tensor]:
    """The pseudo-segmentation decoder's weights in a training checkpoint, if any."""
    pattern = re.compile(r"^objectives\.(\d+)\.decoder\.")
    state = checkpoint["state_dict"]
    found = {pattern.sub("", k): v for k, v in state.items() if pattern.match(k)}
    if not found:
        raise DataError(
            "the checkpoint has no pseudo-segmentation decoder (objectives.N.decoder.*); "
            "use segmentation.decoder: fresh"
        )
    return found


def rebuild_decoder(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """The decoder ``state`` was saved from, at the widths and depth that training chose.

    The widths (``decoder_width`` / ``decoder_channels``) are read off the weights. The depth
    (``decoder_stride``) leaves no single weight to read, so every output stride the backbone
    allows is tried and the one whose decoder has exactly ``state``'s names and shapes is kept:
    the stride sets how many blocks or stages there are and which blocks take a skip.
    """
    channels = state["head.weight"].shape[0] if "head.weight" in state else 1
    if "proj.0.weight" in state:  # progressive (ViT): its first width sets the taper
        kind, widths = "progressive", {"width": int(state["proj.0.weight"].shape[0])}
    else:  # U-Net: every block's width
        blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
        kind = "unet"
        widths = {
            "decoder_channels": [state[f"blocks.{i}.conv2.0.weight"].shape[0] for i in blocks]
        }
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    coarsest = max(feature_channels_and_strides(model)[1])
    for stride in (1 << i for i in range((coarsest - 1).bit_length())):
        try:
            decoder = build_decoder(model, kind, channels, output_stride=stride, **widths)
        except ValueError:  # a U-Net of another block count at this stride
            continue
        if {k: tuple(v.shape) for k, v in decoder.state_dict().items()} == shapes:
            decoder.load_state_dict(state)
            return decoder
    raise DataError(
        f"the checkpoint's pseudo-segmentation decoder ({kind}, {len(state)} tensors) matches no"
        f" decoder for this backbone at any output stride below {coarsest}; was it trained with"
        " another vision backbone?"
    )


def make_decoder(
    encoder: DualEncoder, cfg: SegmentationConfig, pretrained: dict[str, Tensor] | None
) -> nn.Module:
    """A fresh decoder for the backbone, or one filled with ``pretrained`` weights.

    A fresh one is always the full-depth default, whatever pretraining used: it is the fixed
    probe that compares encoders.
    """
    torch.manual_seed(cfg.seed)
    if pretrained is None:
        return build_decoder(encoder.vision.model, "auto", 1)
    decoder = rebuild_decoder(encoder.vision.model, pretrained)
    if decoder.head.out_channels != 1:  # per-head pretraining: keep the body, a 1-channel head
        torch.manual_seed(cfg.seed)  # the same draw however many candidates the rebuild tried
        decoder.head = nn.Conv2d(decoder.head.in_channels, 1, 1)
    return decoder


def dice_scores(logits: Tensor, target: Tensor) -> tuple[float, float, float]:
    """(pixel sums for the dataset Dice: intersection, predicted + true), per-image Dice sum."""
    pred = (logits > 0).float()
    inter = (pred * target).flatten(1).sum(1)
    total = (pred + target).flatten(1).sum(1)
    per_image = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    return float(inter.sum()), float(total.sum()), float(per_image.sum())


@torch.no_grad()
def _features(encoder: DualEncoder, images: Tensor) -> list[Tensor]:
    return encoder.vision(images, dense=True)["multiscale"]


def train_decoder(
    encoder: DualEncoder, decoder: nn.Module, loader: DataLoader, cfg: SegmentationConfig
) -> None:
    device = default_device()
    decoder.to(device).train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr)
    steps = max(cfg.min_steps, cfg.epochs * len(loader))
    done = 0
    while done < steps:
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            logits = decoder(_features(encoder, images), tuple(images.shape[-2:]))
            loss = dice_bce_loss(logits.float(), masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break


@torch.no_grad()
def test_decoder(encoder: DualEncoder, decoder: nn.Module, loader: DataLoader) -> dict:
    device = default_device()
    decoder.eval()
    inter = total = per_image = 0.0
    n = 0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        logits = decoder(_features(encoder, images), tuple(images.shape[-2:]))
        a, b, c = dice_scores(logits.float(), masks)
        inter, total, per_image, n = inter + a, total + b, per_image + c, n + len(images)
    return {"dice": 2 * inter / total if total else 1.0, "dice_per_image": per_image / n}


def run_segmentation(
    encoder: DualEncoder,
    train: Items,
    test: Items,
    image_size: int,
    crop_fov: bool,
    cfg: SegmentationConfig,
    checkpoint: dict,
    num_workers: int = 0,
) -> dict:
    """Dice on ``test`` after training a decoder on each fraction of ``train``'s masks."""
    for split, items in (("train", train), ("test", test)):
        without = [r.origin for _, r in items if r.mask is None]
        if without:
            raise DataError(
                f"segmentation needs a mask for every {split} record; {len(without)} have none "
                f"(e.g. {without[0]}): use MaskCSVSource or SyntheticSource with masks: true"
            )
    encoder.eval().to(default_device())
    for p in encoder.parameters():
        p.requires_grad_(False)
    test_loader = DataLoader(
        MaskDataset(test, image_size, crop_fov), batch_size=cfg.batch_size, num_workers=num_workers
    )
    pretrained = pretrained_decoder_state(checkpoint) if cfg.decoder == "pretrained" else None
    rng = np.random.default_rng(cfg.seed)
    result: dict = {"decoder": cfg.decoder, "n_test": len(test)}
    for fraction in cfg.fractions:
        n = max(1, round(fraction * len(train)))
        subset = [train[i] for i in sorted(rng.permutation(len(train))[:n])]
        loader = DataLoader(
            MaskDataset(subset, image_size, crop_fov),
            batch_size=min(cfg.batch_size, n),
            shuffle=True,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        decoder = make_decoder(encoder, cfg, pretrained)
        train_decoder(encoder, decoder, loader, cfg)
        scores = test_decoder(encoder, decoder, test_loader)
        result[f"{fraction * 100:g}%"] = scores | {"n_train": n}
        logger.info("segmentation %g%%: dice %.4f", fraction * 100, scores["dice"])
    return result

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
from fundus_lit.core.progress import progress
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
        decoder_width: A fresh decoder's deepest width (halved per stage, as in pretraining).
        decoder_stride: Where a fresh decoder stops before its logits are resized (1, 2, 4...).
            A fresh decoder is the fixed probe that compares encoders, so any setting compares
            them fairly; a narrower, shallower one is cheaper per step (benchmarks/results/
            segmentation_eval.md). A pretrained decoder keeps the widths it was trained with.
        epochs: Passes over the training subset (at least ``min_steps`` optimiser steps).
        min_steps: Lower bound on the steps, whatever the subset's size. Lesions are small (under
            1 % of the pixels on the synthetic masks) and a decoder first learns to predict
            nothing: after 50 steps Dice was 0 on every encoder, after 300 it was 0.22
            (benchmarks/results/segmentation_eval.md), so a small fraction must not mean few steps.
        lr: AdamW learning rate of the decoder.
        pos_weight: Weight of lesion pixels in the decoder's BCE (its loss is that BCE plus
            Dice, half each). With few masks an unweighted decoder learns to predict nothing:
            on 4 synthetic masks Dice was 0.002 unweighted and 0.040 at 10.
        batch_size: Images per step.
        seed: Seed of the subset draw, the batch order and the decoder initialisation.
        feature_cache_mb: The encoder is frozen and the images are not augmented, so each
            image's features are computed once and kept on the device when a split's features
            fit in this many MB (0: always recompute); only the decoder then runs per step.
    """

    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    decoder: Literal["fresh", "pretrained"] = "fresh"
    decoder_width: int = 64
    decoder_stride: int = 1
    epochs: int = 10
    min_steps: int = 500
    lr: float = 1e-3
    pos_weight: float = 10.0
    batch_size: int = 8
    seed: int = 0
    feature_cache_mb: int = 2048


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
        pixels = torch.from_numpy(np.array(pad_resize(image, self.size))).permute(2, 0, 1)
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

    A fresh one is built from ``cfg`` alone, whatever pretraining used: it is the fixed probe
    that compares encoders.
    """
    torch.manual_seed(cfg.seed)
    if pretrained is None:
        model = encoder.vision.model
        return build_decoder(
            model, "auto", 1, width=cfg.decoder_width, output_stride=cfg.decoder_stride
        )
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


class FeatureBank:
    """A dataset's frozen-encoder features and masks, computed once and kept on the device, or
    computed per batch when they would not fit ``budget_mb``: same batches, same results."""

    def __init__(
        self, encoder: DualEncoder, data: Dataset, batch_size: int, budget_mb: int, workers: int
    ) -> None:
        self.encoder, self.data, self.batch_size, self.workers = encoder, data, batch_size, workers
        self.features: list[Tensor] | None = None
        self.masks: Tensor | None = None
        if budget_mb > 0 and len(data):
            self._fill(budget_mb * 2**20)

    def _fill(self, budget: int) -> None:
        device, chunks, masks = default_device(), [], []
        loader = DataLoader(self.data, batch_size=self.batch_size, num_workers=self.workers)
        for images, batch_masks in loader:
            feats = _features(self.encoder, images.to(device))
            per_image = sum(f[0].numel() * f.element_size() for f in feats)
            if per_image * len(self.data) > budget:
                return  # too big for the budget: batches are computed as they come
            chunks.append(feats)
            masks.append(batch_masks.to(device))
        self.features = [torch.cat(level) for level in zip(*chunks)]
        self.masks = torch.cat(masks)

    def batches(self, order: list[list[int]]):
        """``(features, masks)`` for each list of indices in ``order``."""
        if self.features is not None:
            assert self.masks is not None
            for idx in order:
                index = torch.tensor(idx, device=self.masks.device)
                yield [f[index] for f in self.features], self.masks[index]
            return
        device = default_device()
        loader = DataLoader(self.data, batch_sampler=order, num_workers=self.workers)
        for images, masks in loader:
            yield _features(self.encoder, images.to(device)), masks.to(device)


def step_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index batches for ``steps`` optimiser steps: seeded shuffled passes over ``n`` items."""
    generator, order = torch.Generator().manual_seed(seed), []
    while len(order) < steps:
        perm = torch.randperm(n, generator=generator).tolist()
        order += [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    return order[:steps]


def train_decoder(
    decoder: nn.Module,
    bank: FeatureBank,
    image_size: int,
    cfg: SegmentationConfig,
    desc: str = "segmentation decoder",
) -> None:
    decoder.to(default_device()).train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr)
    n = len(bank.data)
    batch_size = min(cfg.batch_size, n)
    steps = max(cfg.min_steps, cfg.epochs * -(-n // batch_size))
    order = step_order(n, batch_size, steps, cfg.seed)
    for feats, masks in progress(bank.batches(order), total=steps, desc=desc, unit="step"):
        logits = decoder(feats, (image_size, image_size))
        loss = dice_bce_loss(logits.float(), masks, pos_weight=cfg.pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def test_decoder(decoder: nn.Module, bank: FeatureBank, image_size: int) -> dict:
    decoder.eval()
    n, size = len(bank.data), bank.batch_size
    inter = total = per_image = 0.0
    for feats, masks in bank.batches([list(range(i, min(i + size, n))) for i in range(0, n, size)]):
        logits = decoder(feats, (image_size, image_size))
        a, b, c = dice_scores(logits.float(), masks)
        inter, total, per_image = inter + a, total + b, per_image + c
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
    banked = {"budget_mb": cfg.feature_cache_mb, "workers": num_workers}
    test_bank = FeatureBank(
        encoder, MaskDataset(test, image_size, crop_fov), cfg.batch_size, **banked
    )
    pretrained = pretrained_decoder_state(checkpoint) if cfg.decoder == "pretrained" else None
    rng = np.random.default_rng(cfg.seed)
    result: dict = {"decoder": cfg.decoder, "n_test": len(test)}
    for fraction in cfg.fractions:
        n = max(1, round(fraction * len(train)))
        subset = [train[i] for i in sorted(rng.permutation(len(train))[:n])]
        bank = FeatureBank(
            encoder, MaskDataset(subset, image_size, crop_fov), cfg.batch_size, **banked
        )
        decoder = make_decoder(encoder, cfg, pretrained)
        train_decoder(decoder, bank, image_size, cfg, f"segmentation decoder {fraction * 100:g}%")
        scores = test_decoder(decoder, test_bank, image_size)
        result[f"{fraction * 100:g}%"] = scores | {"n_train": n}
        logger.info("segmentation %g%%: dice %.4f", fraction * 100, scores["dice"])
    return result

"""The dense transfer evaluation's training loop: features banked once are the features computed
per batch, the step order covers every mask once per pass, and the lesion weight of its loss is
the BCE's ``pos_weight``."""

from __future__ import annotations

import dataclasses
import types

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from fundus_lit.core.dice import dice_bce_loss
from fundus_lit.eval import segmentation as seg
from fundus_lit.eval.segmentation import FeatureBank, SegmentationConfig, step_order


class _Vision(nn.Module):
    """The one call the evaluation makes of a vision tower: multi-scale feature maps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = timm.create_model("resnet18", pretrained=False, num_classes=0)
        self.model.eval()

    def forward(self, images: Tensor, dense: bool = False) -> dict:
        _, maps = self.model.forward_intermediates(images.float() / 255, output_fmt="NCHW")
        return {"multiscale": list(maps)}


class _Masks(Dataset):
    """Random images with a lesion square each, the shape MaskDataset yields."""

    def __init__(self, n: int, size: int = 32) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.masks = torch.zeros(n, 1, size, size)
        for i in range(n):
            self.masks[i, :, 4 + i : 10 + i, 6:12] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.masks[i]


@pytest.fixture(scope="module")
def encoder():
    return types.SimpleNamespace(vision=_Vision())


def test_banked_features_are_the_features_computed_per_batch(encoder):
    """Same batches, same masks, same features (to float rounding of another batch shape): the
    bank changes the cost of the evaluation, not its result."""
    banked = FeatureBank(encoder, _Masks(5), 2, budget_mb=64, workers=0)
    streamed = FeatureBank(encoder, _Masks(5), 2, budget_mb=0, workers=0)
    assert banked.features is not None and streamed.features is None
    order = step_order(5, 2, 4, seed=0)
    for (fa, ma), (fb, mb) in zip(banked.batches(order), streamed.batches(order), strict=True):
        assert torch.equal(ma, mb)
        for a, b in zip(fa, fb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_decoder_trains_on_banked_features(encoder):
    cfg = dataclasses.replace(
        SegmentationConfig(), min_steps=3, epochs=1, batch_size=2, decoder_width=32
    )
    bank = FeatureBank(encoder, _Masks(5), cfg.batch_size, 64, workers=0)
    decoder = seg.make_decoder(encoder, cfg, None)
    before = [p.detach().clone() for p in decoder.parameters()]
    seg.train_decoder(decoder, bank, 32, cfg)
    assert any(not torch.equal(a, b) for a, b in zip(before, decoder.parameters()))
    scores = seg.test_decoder(decoder, bank, 32)
    assert 0 <= scores["dice"] <= 1 and 0 <= scores["dice_per_image"] <= 1


def test_a_split_over_the_budget_is_encoded_per_batch(encoder):
    data = _Masks(3, size=64)  # 0.4 MB of features an image
    bank = FeatureBank(encoder, data, 2, budget_mb=1, workers=0)
    assert bank.features is None
    (feats, masks), *_ = bank.batches([[2, 0]])
    assert masks.shape == (2, 1, 64, 64) and torch.equal(masks[1], data[0][1])
    assert [f.shape[0] for f in feats] == [2] * len(feats)


def test_step_order_passes_over_every_mask_once_then_reshuffles():
    order = step_order(5, 2, 7, seed=3)
    assert [len(b) for b in order] == [2, 2, 1, 2, 2, 1, 2]  # two passes, then one step more
    assert sorted(sum(order[:3], [])) == list(range(5))
    assert sorted(sum(order[3:6], [])) == list(range(5))
    assert order == step_order(5, 2, 7, seed=3) and order != step_order(5, 2, 7, seed=4)


def test_pos_weight_weighs_the_lesion_pixels_of_the_bce():
    logits = torch.tensor([[[[0.5, -1.0], [2.0, -0.3]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    plain = dice_bce_loss(logits, target)
    assert dice_bce_loss(logits, target, pos_weight=1.0) == pytest.approx(plain.item())
    dice_part = dice_bce_loss(logits, target, w_dice=1.0, w_bce=0.0)
    terms = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weighted = (terms * (1 + 2 * target)).mean()  # lesion pixels count 3 times
    expected = 0.5 * dice_part + 0.5 * weighted
    assert dice_bce_loss(logits, target, pos_weight=3.0) == pytest.approx(expected.item())

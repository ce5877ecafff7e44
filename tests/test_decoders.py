"""G2D decoders on real timm multi-scale features: shapes, gradient flow, automatic choice."""

from __future__ import annotations

import types

import pytest
import timm
import torch
from torch import Tensor, nn

from fundus_lit.models.decoders import (
    ProgressiveDecoder,
    UNetDecoder,
    build_decoder,
    feature_channels_and_strides,
)


def _timm(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _features(model: nn.Module, images: Tensor) -> list[Tensor]:
    _, maps = model.forward_intermediates(images, output_fmt="NCHW")
    return list(maps)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return _timm("resnet18")


def _vit(img_size: int | tuple[int, int]) -> nn.Module:
    return _timm("vit_tiny_patch16_224", img_size=img_size)


@pytest.mark.parametrize("size", [224, 512])
def test_unet_on_resnet18_reaches_input_resolution(resnet18, size):
    decoder = build_decoder(resnet18)
    assert isinstance(decoder, UNetDecoder)
    batch = 2 if size == 224 else 1  # batch of one: GroupNorm needs no batch statistics
    with torch.no_grad():
        out = decoder(_features(resnet18, torch.randn(batch, 3, size, size)), (size, size))
    assert out.shape == (batch, 1, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [224, 512])
def test_progressive_on_vit_tiny_reaches_input_resolution(size):
    vit = _vit(size)
    decoder = build_decoder(vit)
    assert isinstance(decoder, ProgressiveDecoder)
    feats = _features(vit, torch.randn(1, 3, size, size))
    assert all(f.shape[-2:] == (size // 16, size // 16) for f in feats)  # one stride: 16
    with torch.no_grad():
        out = decoder(feats, (size, size))
    assert out.shape == (1, 1, size, size) and torch.isfinite(out).all()


def _assert_all_grads(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradients_reach_decoder_and_cnn_backbone(resnet18):
    resnet18.zero_grad(set_to_none=True)
    decoder = build_decoder(resnet18)
    out = decoder(_features(resnet18, torch.randn(2, 3, 64, 64)), (64, 64))
    out.square().mean().backward()
    _assert_all_grads(decoder)
    # timm zero-inits each residual block's last BN gamma, so layer4's convs behind it get zero
    # gradient at init; the gamma itself and the stage's downsample path still must get some
    deepest = (resnet18.layer4[-1].bn2.weight, resnet18.layer4[0].downsample[0].weight)
    for p in (resnet18.conv1.weight, *deepest):
        assert p.grad is not None and p.grad.abs().sum() > 0
    resnet18.zero_grad(set_to_none=True)


def test_gradients_reach_decoder_and_vit_backbone():
    vit = _vit(64)
    decoder = build_decoder(vit)
    out = decoder(_features(vit, torch.randn(2, 3, 64, 64)), (64, 64))
    out.square().mean().backward()
    _assert_all_grads(decoder)
    for p in (vit.patch_embed.proj.weight, vit.pos_embed, vit.blocks[-1].mlp.fc2.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_non_square_and_odd_sizes(resnet18):
    size = (97, 130)  # resnet maps 49x65, 25x33, 13x17, 7x9, 4x5: not powers of two apart
    with torch.no_grad():
        out = build_decoder(resnet18)(_features(resnet18, torch.randn(1, 3, *size)), size)
        assert out.shape == (1, 1, *size)
        vit = _vit((96, 160))
        grid = _features(vit, torch.randn(1, 3, 96, 160))
        assert grid[-1].shape[-2:] == (6, 10)
        decoder = build_decoder(vit)
        out = decoder(grid, (96, 160))
        assert out.shape == (1, 1, 96, 160)
        assert torch.equal(decoder(grid[-1], (96, 160)), out)  # a bare grid works the same
        assert decoder(grid, (100, 150)).shape == (1, 1, 100, 150)  # final resize


def test_build_decoder_picks_kind_from_feature_info(resnet18):
    channels, strides = feature_channels_and_strides(resnet18)
    assert (channels, strides) == ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32])
    unet = build_decoder(resnet18)
    assert len(unet.blocks) == 5  # 4 skips (16, 8, 4, 2) + one skip-less block to stride 1
    assert isinstance(build_decoder(resnet18, "progressive"), ProgressiveDecoder)
    vit = _vit(224)
    assert feature_channels_and_strides(vit)[1] == [16] * 12
    assert isinstance(build_decoder(vit, "unet"), UNetDecoder)
    assert build_decoder(vit, out_channels=3).head.out_channels == 3
    with pytest.raises(ValueError, match="unknown decoder kind"):
        build_decoder(resnet18, "fpn")  # type: ignore[arg-type]


def test_unet_stride4_backbone_and_channel_checks():
    # ConvNeXt-like: shallowest map at stride 4 -> two skip-less blocks after the skips
    decoder = UNetDecoder([8, 16, 32], [4, 8, 16], decoder_channels=[32, 16, 8, 8])
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip([8, 16, 32], [4, 8, 16])]
    assert decoder(feats, (64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="needs 4 entries"):
        UNetDecoder([8, 16, 32], [4, 8, 16], decoder_channels=[32, 16])
    with pytest.raises(ValueError, match="3 feature maps"):
        decoder(feats[1:], (64, 64))


def test_decoder_width_is_configurable_and_a_trained_width_reloads(resnet18):
    from fundus_lit.eval.segmentation import SegmentationConfig, make_decoder

    narrow = build_decoder(resnet18, width=64)
    wide = build_decoder(resnet18)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(wide) / 4
    explicit = build_decoder(resnet18, decoder_channels=[96, 48, 24, 16, 16])
    assert [b.conv2[0].out_channels for b in explicit.blocks] == [96, 48, 24, 16, 16]
    # the segmentation evaluation rebuilds a trained decoder at the width it was trained with
    encoder = types.SimpleNamespace(vision=types.SimpleNamespace(model=resnet18))
    rebuilt = make_decoder(encoder, SegmentationConfig(), explicit.state_dict())
    assert [b.conv2[0].out_channels for b in rebuilt.blocks] == [96, 48, 24, 16, 16]

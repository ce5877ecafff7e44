"""What both towers share: frozen means no gradient and eval mode, whatever the trainer asks."""

from __future__ import annotations

from typing import Any

from torch import nn


class Tower(nn.Module):
    """Base of the image and text towers."""

    frozen: bool = False

    def set_frozen(self, frozen: bool) -> None:
        """Freeze or not, then enter train mode (loaders such as ``from_pretrained`` return eval
        mode and Lightning keeps module modes, so a trainable tower would lose its dropout)."""
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> Tower:
        return super().train(mode and not self.frozen)


def compile_in_place(model: nn.Module, options: dict[str, Any] | None) -> None:
    """``torch.compile`` the module's forward in place: ``nn.Module.compile`` keeps parameter
    names, so checkpoints of compiled and plain runs load into each other (``torch.compile(m)``
    would prefix every key with ``_orig_mod.``). Only ``forward`` is compiled; the dense path
    (``forward_intermediates``) runs eagerly."""
    model.compile(**(options or {}))

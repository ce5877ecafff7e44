"""Warnings the libraries print on every run although nothing is wrong, silenced one by one.

A warning that is expected by design teaches a user to skip warnings, and then the one that
matters is missed. Each filter here names one message whose cause is known and harmless in
fundus-lit; everything else still prints. Where fundus-lit itself caused a warning, the cause
is fixed at its place instead (the CLI's arguments, the checkpoint callback, save calls).
"""

from __future__ import annotations

import logging
import warnings

from torch import nn

#: Lightning's advertisement for its hosted logger, printed by every Trainer
_TIP = "💡 Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP)


def quiet_library_warnings(verb: str) -> None:
    """Filters for one ``fundus-lit`` command (``fit``, ``validate``...), set before the Trainer
    is built."""
    # Lightning 2.6 calls a torch.utils._pytree API that newer torch deprecates: not ours to fix
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    if verb != "fit":
        # validate/test/predict only read the weights: the states of the training callbacks
        # and the checkpoint folder of the run that wrote the file do not matter to them
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from")


def unexpected_eval_modules(model: nn.Module) -> tuple[int, list[str]]:
    """``(modules in eval mode, those of them not inside a frozen part)``.

    Frozen towers and momentum encoders stay in eval mode by design (no dropout, fixed batch
    statistics) and hold no trainable parameter; a module in eval mode inside a part that
    trains is what Lightning's "module(s) in eval mode" warning is for."""
    modules = dict(model.named_modules())
    in_eval = [name for name, module in modules.items() if not module.training]
    frozen = {
        name
        for name, module in modules.items()
        if (params := list(module.parameters())) and not any(p.requires_grad for p in params)
    }

    def inside_frozen(name: str) -> bool:
        parts = name.split(".") if name else []
        return any(".".join(parts[:i]) in frozen for i in range(len(parts), 0, -1))

    return len(in_eval), [name for name in in_eval if not inside_frozen(name)]


def quiet_eval_mode_warning(model: nn.Module) -> None:
    """Silence Lightning's eval-mode warning for this model's start of training when every
    module in eval mode belongs to a frozen part; it still prints if one does not."""
    count, unexpected = unexpected_eval_modules(model)
    if count and not unexpected:
        warnings.filterwarnings(
            "ignore", message=rf"Found {count} module\(s\) in eval mode at the start of training"
        )

"""The training progress bar of ``fundus-lit fit``: the position moves every step, the training
loss only at logging steps.

Lightning converts every value logged with ``prog_bar=True`` to a Python number after every
batch, which on a GPU waits for the step to finish: one host synchronisation per step, for a
number nobody reads at that rate. So the training step logs nothing to the bar, and this bar
reads the loss itself from the callback metrics (device tensors) when Lightning writes the logs
anyway.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

SHOWN = "train/loss"  #: the training value the bar shows


class _LoggingStepValues:
    """Mixin: during training, the bar's values are read only at logging steps."""

    _shown: dict[str, Any] | None = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        logging = getattr(trainer._logger_connector, "should_update_logs", True)
        if trainer.training and not logging:  # the values shown last (none read yet: none)
            if self._shown is None:
                self._shown = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
            return self._shown
        shown = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        value = trainer.callback_metrics.get(SHOWN)
        if value is not None:  # the one host read, when the logs are written anyway
            shown[SHOWN] = float(value)
        self._shown = shown
        return shown


class LoggingStepRichBar(_LoggingStepValues, RichProgressBar):
    """Rich progress bar whose values refresh at logging steps."""


class LoggingStepTQDMBar(_LoggingStepValues, TQDMProgressBar):
    """TQDM progress bar whose values refresh at logging steps."""


def logging_step_bar() -> ProgressBar:
    """The bar Lightning would pick (Rich when installed), refreshing values at logging steps."""
    return LoggingStepRichBar() if _RICH_AVAILABLE else LoggingStepTQDMBar()

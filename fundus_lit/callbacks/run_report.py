"""The end-of-fit report: where the logs and checkpoints are, and how the training loss moved."""

from __future__ import annotations

import math
from collections import deque

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only


class RunReport(L.Callback):
    """At the end of ``fit``, say where the logs and checkpoints are and how the loss moved.

    The first and last values are means over the first and last ``window`` training steps, so
    one noisy batch does not decide the story. Losses stay on the device until the end: reading
    them each step would synchronise the accelerator every step.
    """

    def __init__(self, window: int = 5) -> None:
        self.window = window
        self.first: list = []
        self.last: deque = deque(maxlen=window)
        self.steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            loss = loss.detach()
            if len(self.first) < self.window:
                self.first.append(loss)
            self.last.append(loss)
            self.steps += 1

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        lines = [f"logs (TensorBoard): {trainer.log_dir}"]
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                if cb.best_model_path:
                    lines.append(f"best checkpoint: {cb.best_model_path}")
                if cb.last_model_path:
                    lines.append(f"last checkpoint: {cb.last_model_path}")
        if self.steps:
            k = len(self.first)
            start = sum(float(x) for x in self.first) / k
            end = sum(float(x) for x in self.last) / k
            lines.append(
                f"train loss: start {start:.4f} -> end {end:.4f} "
                f"(mean of first/last {k} of {self.steps} steps; log B = "
                f"{math.log(max(2, pl_module.hparams.get('batch_size', 2))):.4f})"
            )
        print("\n".join(["", "fundus-lit run report", *("  " + x for x in lines)]), flush=True)

"""What the training step logs besides its losses: throughput, temperature, learning rate and
the pictures objectives draw. Values go to ``self.log`` as device tensors or host numbers; none
is read back from the device here (Lightning reads them at logging steps)."""

from __future__ import annotations

import time

import lightning as L
from torch import Tensor

from fundus_lit.core.distributed import world


class StepRate:
    """Samples per second over all ranks, from the time between two training batches."""

    def __init__(self) -> None:
        self.started: float | None = None

    def log(self, module: L.LightningModule, batch_size: int) -> None:
        now = time.perf_counter()
        if self.started is not None:
            rate = batch_size * world()[1] / max(now - self.started, 1e-9)
            module.log("train/samples_per_s", rate, batch_size=batch_size)
        self.started = now


def log_train_state(module: L.LightningModule, scale: Tensor, batch_size: int) -> None:
    """The logit scale (a device tensor) and the base learning rate of the first group."""
    module.log("train/logit_scale", scale.detach(), batch_size=batch_size)
    group = module.trainer.optimizers[0].param_groups[0]
    module.log("train/lr", group["lr"] / group.get("lr_mult", 1.0), batch_size=batch_size)


def log_images(module: L.LightningModule, prefix: str, images: dict[str, Tensor]) -> None:
    """Pictures an objective drew this step (copied to the host: objectives draw them only every
    so many steps), into TensorBoard when that is the logger."""
    experiment = getattr(module.logger, "experiment", None)
    if not images or not hasattr(experiment, "add_images"):
        return
    for key, value in images.items():
        experiment.add_images(f"{prefix}/{key}", value, module.global_step)

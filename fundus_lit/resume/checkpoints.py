"""Checkpoint writing: atomic files, the best and last checkpoints of every fit, and a mid-epoch
``last.ckpt`` every N steps."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint next to its destination, then renames it over the old one.

    A kill during a save (SIGKILL, a node lost, a full disk) leaves the previous checkpoint
    whole. Lightning's own save writes through a temporary file in the system's temp folder,
    which is a plain copy (not a rename) whenever that folder is on another filesystem than the
    checkpoints, as on most clusters. Remote paths (``s3://``...) keep Lightning's way.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's checkpoint callback (the ``checkpoint.`` keys of every ``fit``) without its
    warning that the monitored metric is missing when an epoch ends before any validation ran
    (a run stopped by ``max_steps`` mid-epoch, validation every few epochs): there is nothing to
    rank yet and Lightning saves nothing either way. Once validation has run, a missing metric
    still stops the run (Lightning's own check); a run with no validation data says once that
    it keeps no best checkpoint."""

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.save_top_k == 0 or self.monitor is None or self.monitor in monitor_candidates:
            return super()._save_topk_checkpoint(trainer, monitor_candidates)
        if trainer.fit_loop.epoch_loop.val_loop._has_run:
            return super()._save_topk_checkpoint(trainer, monitor_candidates)
        batches = trainer.num_val_batches
        if not (sum(batches) if isinstance(batches, list) else batches) and not self._warned:
            self._warned = True
            rank_zero_warn(
                f"this run has no validation data, so no best checkpoint by "
                f"{self.monitor!r} is kept (last.ckpt is); set checkpoint.monitor=null to "
                "keep the newest instead, or give the data module validation data"
            )

    _warned = False


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimiser steps, mid-epoch included, and at
    the final step of every run that ends without a crash.

    The epoch-end checkpoint (last + best by validation loss) keeps its own callback; this one
    bounds the work a crash or a kill loses. Both write ``last.ckpt`` into the run's checkpoint
    folder, so ``--ckpt_path last`` finds whichever is newer. A run that stops between those
    saves (``max_steps`` or ``max_time`` mid-epoch, a callback setting ``should_stop``) would
    otherwise leave a ``last.ckpt`` some steps short of the weights it ended with: Lightning's
    own train-end save only runs when no last checkpoint was written at all.
    """

    def __init__(self, every_n_train_steps: int = 500, dirpath: str | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            monitor=None,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            # one last.ckpt shared with the epoch-end callback, overwritten in place, instead of
            # last-v1.ckpt, last-v2.ckpt... when the other one wrote it first
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0 or _saved_at(trainer, trainer.global_step):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _saved_at(trainer: L.Trainer, step: int) -> bool:
    """Whether some callback already wrote ``last.ckpt`` at ``step``."""
    for callback in trainer.callbacks:
        if (
            isinstance(callback, ModelCheckpoint)
            and callback.save_last
            and callback.last_model_path
            and callback._last_global_step_saved == step
        ):
            return True
        # a PreemptionCheckpoint (preemption.py, which imports this module) records its step here
        if getattr(callback, "saved_step", None) == step:
            return True
    return False

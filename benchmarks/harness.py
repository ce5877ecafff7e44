"""What the Lightning-step benchmarks share: a loader that costs nothing and a bare trainer, so
that what they time is the training step and nothing around it."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from fundus_lit.data.batch import Batch


class Repeat(Dataset):
    """One prepared batch, served ``n`` times."""

    def __init__(self, batch: Batch, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Batch:
        return self.batch


def repeat_loader(batch: Batch, n: int) -> DataLoader:
    """``batch`` ``n`` times, in the main process, without collation."""
    return DataLoader(Repeat(batch, n), batch_size=None, num_workers=0)


def bare_trainer(steps: int, **kwargs: Any) -> L.Trainer:
    """A trainer without logging, checkpoints, progress bar, summary or validation."""
    return L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kwargs,
    )

"""A callback for subprocess tests: after validation, each rank saves what the evaluation
callbacks computed (``.last``), so a test can compare runs with different numbers of ranks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class DumpEvaluations(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = {
            type(cb).__name__: cb.last
            for cb in trainer.callbacks
            if type(cb).__name__ in ("ZeroShotEvaluation", "RetrievalEvaluation")
        }
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(found, self.out / f"rank{trainer.global_rank}.pt")

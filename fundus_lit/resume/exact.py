"""The random state a checkpoint must carry for a resumed run to take bit-identical steps:
:class:`ExactResume`."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from fundus_lit.core.distributed import world

log = logging.getLogger(__name__)


class ExactResume(L.Callback):
    """Carries the Python, NumPy, torch and CUDA generators of every rank in checkpoints, and
    makes sure the train loader gets its saved position back.

    The random state is restored at the first training batch after a resume, not when the
    checkpoint is read: what runs in between (building the model, a sanity validation) must not
    move it. Each rank stores its own generators (ranks draw different dropout masks), keyed by
    rank in the checkpoint, since Lightning gathers callback states from rank 0 only.

    Lightning (2.6) hands saved loader states over only when it builds the train loader after
    reading the checkpoint; ``trainer.estimated_stepping_batches`` (the schedule's length, asked
    for in ``configure_optimizers``) builds it before, and the state is then never delivered.
    :meth:`on_train_start` delivers it, before the first batch is drawn.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def capture() -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            # tensors and numbers only: checkpoints load with weights_only=True
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def apply(state: dict[str, Any]) -> None:
        random.setstate(_python_state(state["python"]))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def state_dict(self) -> dict[str, Any]:
        ranks = _gather_objects(self.capture())
        return {"ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks", [])
        rank, _ = world()
        if rank < len(ranks):
            self._pending = ranks[rank]
        else:  # more ranks than the run that wrote it: fresh but distinct streams
            log.warning("checkpoint has no random state for rank %d; the run goes on", rank)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if getattr(fit_loop, "_combined_loader_states_to_load", None):
            fit_loop._load_combined_loader_states()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._pending is not None:
            self.apply(self._pending)
            self._pending = None


def _python_state(state: Any) -> tuple:
    # a weights-only checkpoint load turns the state's inner tuple into a list
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _gather_objects(obj: Any) -> list[Any]:
    _, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    torch.distributed.all_gather_object(out, obj)
    return out

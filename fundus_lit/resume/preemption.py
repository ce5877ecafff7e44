"""SIGTERM / SIGUSR1: save a checkpoint where the run stands, stop cleanly, and exit with 128 + the
signal so a chained script does not mistake a preempted run for a finished one."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: (signal number, checkpoint path) of the run a PreemptionCheckpoint stopped in this process
preempted: tuple[int, str] | None = None


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM or SIGUSR1 (what clusters send before they preempt or time a job out), write
    ``last.ckpt`` at the end of the current training batch and stop the run.

    The handler only records the signal; the checkpoint is written between steps, where the
    state is consistent. Under SLURM with auto-requeue, Lightning's own SIGUSR1 handler
    (checkpoint + ``scontrol requeue``) runs first; the requeued job resumes with
    ``--ckpt_path last``, which picks the newest of this checkpoint and Lightning's.
    After the run, :func:`exit_if_preempted` ends the process with status 128 + the signal
    number, so a script chaining commands does not mistake a preempted run for a finished one.

    Args:
        signals: Signal names to handle.
    """

    def __init__(self, signals: list[str] | None = None) -> None:
        self.signals = list(signals or ["SIGTERM", "SIGUSR1"])
        self.received: int | None = None
        self.saved: str | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's own handlers are in place, so they are chained, not replaced
        for name in self.signals:
            signum = getattr(signal, name, None)
            if signum is None:  # e.g. SIGUSR1 on Windows
                continue
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning stops a SIGTERMed run at the end of the epoch with SIGTERMException; a
        # signal during validation or the epoch's last batch never reaches a batch end here
        if isinstance(exception, SIGTERMException) and self.saved is None:
            self.received = self.received or int(signal.SIGTERM)
            self._save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.saved is not None:
            return
        # Lightning's own flag covers a SIGTERM that came before on_train_start; every rank must
        # take part in the save, so stop when any rank was signalled (one flag per step, a
        # collective only when distributed)
        received = self.received is not None or bool(getattr(trainer, "received_sigterm", False))
        received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        if self.received is None:
            self.received = int(signal.SIGTERM)
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        assert self.received is not None
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full state: it must resume
        self.saved, self.saved_step = str(path), trainer.global_step
        trainer.should_stop = True
        global preempted
        preempted = (self.received, self.saved)
        rank_zero_info(
            f"received {signal.Signals(self.received).name}: saved {path} at step "
            f"{trainer.global_step}; resume with --ckpt_path last"
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where ``last.ckpt`` of this run goes: the folder of its checkpoint callbacks."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def exit_if_preempted() -> None:
    """Exit with 128 + signal number when a :class:`PreemptionCheckpoint` stopped the run."""
    global preempted
    if preempted is not None:
        (signum, path), preempted = preempted, None  # read once: a later run in-process is new
        print(
            f"fundus-lit: preempted by {signal.Signals(signum).name}; checkpoint {path}; "
            "resume with --ckpt_path last",
            file=sys.stderr,
        )
        sys.exit(128 + int(signum))

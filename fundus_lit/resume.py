"""Interrupted runs continue as if nothing happened: periodic and preemption checkpoints, the
random state they must carry, and what ``--ckpt_path last`` means on the command line.

Lightning already checkpoints the weights, optimiser, schedulers, loop progress, module buffers
(EMA copies, ViLReF queues) and the train loader's position (:mod:`fundus_lit.data.resumable`).
What it leaves out is the global random state that dropout and random masking draw from, and
it never hands the loader its state when the schedule asked for the number of steps first;
:class:`ExactResume` fixes both, so a resumed run takes bit-identical steps.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from jsonargparse import Namespace, dict_to_namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fundus_lit.core.distributed import world

log = logging.getLogger(__name__)

#: (signal number, checkpoint path) of the run a PreemptionCheckpoint stopped in this process
preempted: tuple[int, str] | None = None


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
        if isinstance(callback, PreemptionCheckpoint) and callback.saved_step == step:
            return True
    return False


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


def find_last(run_dirs: list[Path], extra: list[Path] = ()) -> Path | None:
    """The newest ``last*.ckpt`` under the version folders of a run (and Lightning's SLURM
    ``hpc_ckpt_*.ckpt`` files in ``extra`` folders)."""
    candidates: list[Path] = []
    for run_dir in run_dirs:
        candidates += run_dir.glob("version_*/checkpoints/last*.ckpt")
        candidates += run_dir.glob("checkpoints/last*.ckpt")
    for folder in extra:
        candidates += folder.glob("hpc_ckpt_*.ckpt")
    candidates = [c for c in candidates if c.is_file()]
    return max(candidates, key=os.path.getmtime) if candidates else None


def resolve_last(config: Namespace) -> None:
    """``--ckpt_path last``: the newest last checkpoint of this recipe's earlier runs, and
    the run folder (logger version) it belongs to, so logs and checkpoints continue there.

    ``config`` is the parsed config of one trainer verb (``trainer``, ``ckpt_path`` and the
    ``checkpoint``/``step_checkpoint`` groups); its ``ckpt_path`` and logger version are set in
    place. Lightning looks for ``last.ckpt`` only in the folder of the run it is starting, which
    for a versioned logger is a new, empty one. No checkpoint yet starts from scratch (the
    first submission of a requeued cluster job runs the same command)."""
    trainer = config.trainer
    root = Path(trainer.get("default_root_dir") or os.getcwd())
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    run_dirs: list[Path] = []
    if logger is None or logger is True:  # Lightning's default TensorBoard logger
        trainer.logger = logger = dict_to_namespace(
            {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root)},
            }
        )
    if logger:
        args = logger.get("init_args") or {}
        save_dir = Path(args.get("save_dir") or root)
        name = args.get("name", "lightning_logs")
        run_dirs.append(save_dir / name if name else save_dir)
    else:
        run_dirs.append(root)
    for group in ("checkpoint", "step_checkpoint"):
        dirpath = config.get(group, {}).get("dirpath")
        if dirpath:
            run_dirs.append(Path(dirpath).parent)
    found = find_last(run_dirs, extra=[root])
    if found is None:
        print(
            f"fundus-lit: no last checkpoint under {', '.join(map(str, run_dirs))}; "
            "starting from scratch",
            file=sys.stderr,
        )
        config.ckpt_path = None
        return
    print(f"fundus-lit: resuming from {found}", file=sys.stderr)
    config.ckpt_path = str(found)
    version = found.parent.parent.name
    if logger and found.parent.name == "checkpoints" and version.startswith("version_"):
        logger.init_args.version = version

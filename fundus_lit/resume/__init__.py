"""Interrupted runs continue as if nothing happened: periodic and preemption checkpoints, the
random state they must carry, and what ``--ckpt_path last`` means on the command line.

Lightning already checkpoints the weights, optimiser, schedulers, loop progress, module buffers
(EMA copies, ViLReF queues) and the train loader's position (:mod:`fundus_lit.data.resumable`).
What it leaves out is the global random state that dropout and random masking draw from, and
it never hands the loader its state when the schedule asked for the number of steps first;
:class:`ExactResume` fixes both, so a resumed run takes bit-identical steps.

The parts: :mod:`.exact` (random state), :mod:`.checkpoints` (atomic, best/last and step
checkpoints), :mod:`.preemption` (signals) and :mod:`.last` (``--ckpt_path last``).
"""

from fundus_lit.resume.checkpoints import AtomicCheckpointIO, BestAndLastCheckpoint, StepCheckpoint
from fundus_lit.resume.exact import ExactResume
from fundus_lit.resume.last import find_last, resolve_last
from fundus_lit.resume.preemption import (
    PreemptionCheckpoint,
    exit_if_preempted,
    last_checkpoint_path,
)

__all__ = [
    "AtomicCheckpointIO",
    "BestAndLastCheckpoint",
    "ExactResume",
    "PreemptionCheckpoint",
    "StepCheckpoint",
    "exit_if_preempted",
    "find_last",
    "last_checkpoint_path",
    "resolve_last",
]

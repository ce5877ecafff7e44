"""The non-finite loss guard: skip a step whose loss is NaN or infinite, and stop after several.

A single bad batch (a corrupt image, an fp16 overflow) should not poison the weights or end a
week-long run, but a run that keeps producing NaN must stop with a message that says where and
which term. The decision is taken on every rank together: under DDP all ranks must step, or none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN or infinite for ``max_steps`` steps in a row."""


class NonFiniteGuard:
    """Counts non-finite steps; ``max_steps`` in a row raise :class:`NonFiniteLossError`.

    Args:
        max_steps: How many non-finite steps in a row stop the run; 0 switches the guard off
            (it reads the loss on the host each step, a device sync).
    """

    def __init__(self, max_steps: int) -> None:
        if max_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {max_steps}")
        self.max_steps = max_steps
        self.steps = 0  # all skipped steps of the run
        self.run = 0  # skipped steps in a row
        self.skipped = False  # whether the current step is skipped

    def check(
        self,
        loss: Tensor,
        any_rank: Callable[[bool], bool],
        where: str,
        terms: Mapping[str, Tensor],
    ) -> bool:
        """Whether this step must be dropped: its loss is not finite on some rank.

        ``any_rank`` reduces the local decision over ranks (the strategy's
        ``reduce_boolean_decision(..., all=False)``); ``where`` and ``terms`` name the step and
        the loss terms in the warning and the error.
        """
        self.skipped = False
        if not self.max_steps:
            return False
        if not any_rank(not bool(torch.isfinite(loss.detach()))):
            self.run = 0
            return False
        self.steps += 1
        self.run += 1
        self.skipped = True
        listed = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        if self.run >= self.max_steps:
            raise NonFiniteLossError(
                f"the loss was not finite for {self.run} steps in a row, the last at "
                f"{where}: {listed}. Lower optim.lr, check the data, train in bf16-mixed or "
                "32-true rather than 16-mixed, or raise model.init_args.max_nonfinite_steps."
            )
        rank_zero_warn(f"{where}: the loss is not finite ({listed}); the step is skipped")
        return True

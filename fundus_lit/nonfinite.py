"""The non-finite loss guard: skip a step whose loss is NaN or infinite, and stop after several.

A single bad batch (a corrupt image, an fp16 overflow) should not poison the weights or end a
week-long run, but a run that keeps producing NaN must stop with a message that says where and
which term. The decision is taken on every rank together: under DDP all ranks must step, or none.

Everything the guard decides stays on the device: reading the loss on the host each step would
make every step wait for the GPU. The step is dropped by the fused optimiser itself (its
``found_inf`` input, the mechanism AMP's gradient scaler uses), objectives make their EMA and
queue writes conditional on the same flag, and the counters are read on the host only when
:meth:`NonFiniteGuard.report` is called, at logging steps and at the end of training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN or infinite for ``max_steps`` steps in a row."""


class NonFiniteGuard:
    """Flags non-finite steps on the device; ``max_steps`` in a row raise
    :class:`NonFiniteLossError` at the next report.

    Args:
        max_steps: How many non-finite steps in a row stop the run; 0 switches the guard off.
    """

    def __init__(self, max_steps: int) -> None:
        if max_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {max_steps}")
        self.max_steps = max_steps
        self.steps = 0  # skipped steps of the run, as of the last report (host)
        #: 1.0 when the coming optimiser step must be dropped, 0-dim float32: the layout of
        #: a fused optimiser's ``found_inf``; None before the first check of a step
        self.flag: Tensor | None = None
        self._state: dict[str, Tensor] = {}
        self._names: list[str] = []

    def check(
        self,
        loss: Tensor,
        any_rank: Callable[[Tensor], Tensor],
        step: int,
        terms: Mapping[str, Tensor],
    ) -> Tensor | None:
        """Flag this step if its loss is not finite on some rank; no host read.

        ``any_rank`` takes the maximum of a flag over ranks; ``step`` and ``terms`` are kept for
        the report. Flags of accumulated micro-batches combine: one bad micro-batch drops the
        optimiser step. Returns the flag (None when the guard is off).
        """
        if not self.max_steps:
            return None
        bad = any_rank((~torch.isfinite(loss.detach())).float().reshape(()))
        self.flag = bad if self.flag is None else torch.maximum(self.flag, bad)
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        if not self._state or len(self._names) != len(terms):
            self._names = list(terms)
            zero = bad.new_zeros(())
            self._state = {
                "total": zero.clone(),  # skipped steps of the run
                "unreported": zero.clone(),  # skipped since the last report
                "run": zero.clone(),  # skipped in a row, now
                "first_step": zero - 1,  # first skip since the last report
                "first_terms": values.new_zeros(values.shape),
                "stop_step": zero - 1,  # where the run reached max_steps
                "stop_run": zero.clone(),
                "stop_terms": values.new_zeros(values.shape),
            }
        s, hit = self._state, bad > 0
        s["total"] += bad
        s["run"].copy_((s["run"] + 1) * bad)
        first = hit & (s["unreported"] == 0)
        s["first_step"].copy_(torch.where(first, float(step), s["first_step"]))
        s["first_terms"].copy_(torch.where(first, values, s["first_terms"]))
        s["unreported"] += bad
        stop = (s["run"] >= self.max_steps) & (s["stop_step"] < 0)
        s["stop_step"].copy_(torch.where(stop, float(step), s["stop_step"]))
        s["stop_run"].copy_(torch.where(stop, s["run"], s["stop_run"]))
        s["stop_terms"].copy_(torch.where(stop, values, s["stop_terms"]))
        return self.flag

    @property
    def total(self) -> Tensor | None:
        """Skipped steps of the run, on the device (for logging without a host read)."""
        return self._state.get("total")

    def taken(self) -> Tensor | None:
        """1.0 if the optimiser step just made was taken, 0.0 if dropped; None when not known
        (the guard is off). Clears the flag for the next step."""
        flag, self.flag = self.flag, None
        return None if flag is None else 1.0 - flag

    def report(self) -> None:
        """Read the counters on the host (one transfer): warn about the steps skipped since the
        last report, and raise if ``max_steps`` were skipped in a row."""
        if not self._state:
            return
        s = self._state
        keys = ("total", "unreported", "first_step", "stop_step", "stop_run")
        head = torch.stack([s[k] for k in keys])
        values = torch.cat([head, s["first_terms"], s["stop_terms"]]).tolist()
        total, unreported, first_step, stop_step, stop_run = (int(v) for v in values[:5])
        n = len(self._names)
        first_terms, stop_terms = values[5 : 5 + n], values[5 + n :]
        self.steps = total
        if stop_step >= 0:
            raise NonFiniteLossError(
                f"the loss was not finite for {stop_run} steps in a row, the last at "
                f"step {stop_step}: {self._listed(stop_terms)}. Lower optim.lr, check the data, "
                "train in bf16-mixed or 32-true rather than 16-mixed, or raise "
                "model.init_args.max_nonfinite_steps."
            )
        if unreported:
            more = f" ({unreported} steps skipped since the last report)" if unreported > 1 else ""
            rank_zero_warn(
                f"step {first_step}: the loss is not finite ({self._listed(first_terms)}); "
                f"the step is skipped{more}"
            )
            s["unreported"].zero_()

    def _listed(self, values: list[float]) -> str:
        return ", ".join(f"{k}={v:.4g}" for k, v in zip(self._names, values))

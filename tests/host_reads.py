"""A callback that records every host read of a tensor during training steps (issue 22): the
calls that copy a device value to the host and so wait for the GPU (``item``, ``tolist``,
``cpu``, ``numpy``, ``bool()``, ``float()``, ``int()``). On a CPU run they are cheap, but the
same calls are synchronisations on a GPU, so counting them on CPU proves where a GPU run would
stall. Data loading is left out: with workers it runs in other processes, on host tensors."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import lightning as L
import torch

_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _site() -> str | None:
    """Where the read came from (the innermost frame outside torch's tensor code), or None for a
    read made while loading data."""
    frame = sys._getframe(2)
    site = None
    while frame is not None:
        name = frame.f_code.co_filename
        if "torch/utils/data" in name:
            return None
        if site is None and "torch/_tensor" not in name and "host_reads" not in name:
            site = f"{name.split('site-packages/')[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return site


class HostReads(L.Callback):
    """Counts host reads per training batch and which batches were logging steps."""

    def __init__(self) -> None:
        self.batch: int | None = None
        self.reads: dict[int, Counter[str]] = {}
        self.logging: set[int] = set()
        self._saved: dict[str, Any] = {}

    def _patch(self) -> None:
        for method in _METHODS:
            original = getattr(torch.Tensor, method)
            self._saved[method] = original

            def counted(tensor: torch.Tensor, *args: Any, _o: Any = original, _m: str = method):
                if self.batch is not None:
                    site = _site()
                    if site is not None:
                        self.reads.setdefault(self.batch, Counter())[f"{_m} {site}"] += 1
                return _o(tensor, *args)

            setattr(torch.Tensor, method, counted)

    def _unpatch(self) -> None:
        for method, original in self._saved.items():
            setattr(torch.Tensor, method, original)
        self._saved.clear()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._patch()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.batch = None
        self._unpatch()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, err: BaseException):
        self._unpatch()

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        self.batch = batch_idx

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        # the logger connector writes this step's values after this hook when this is true
        if trainer._logger_connector.should_update_logs:
            self.logging.add(batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.batch = None  # epoch-end logging may read

    def outside_logging(self) -> dict[int, Counter[str]]:
        """The reads of batches whose step wrote no logs: what a GPU run would wait for."""
        return {b: c for b, c in self.reads.items() if b not in self.logging}

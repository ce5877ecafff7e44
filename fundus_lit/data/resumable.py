"""A training loader that Lightning can checkpoint mid-epoch and resume at the same batch.

Lightning stores the ``state_dict`` of a train loader that has one (it checks for the
``state_dict`` / ``load_state_dict`` pair) in every checkpoint and hands it back on resume before
asking for an iterator. The state is the epoch and the batches already served in it; the
samplers of :mod:`fundus_lit.data.samplers` draw each epoch's order from ``(seed, epoch)`` only,
so skipping that many keys gives the resumed run exactly the batches the interrupted one had
left, without decoding the skipped images.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from fundus_lit.data.samplers import EpochSampler


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` whose position survives a checkpoint.

    Batches are counted as the main process yields them: Lightning does not prefetch from a
    loader with a length, so at a checkpoint the count is the number of batches trained on.
    """

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(getattr(self, "_served", 0))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs until the first batch is asked for, by which time Lightning
        # has set the sampler's epoch (it creates the iterator first on a resume).
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler (or a subclass) as its sampler")
        resume, self._resume = getattr(self, "_resume", None), None
        skip = 0
        # Lightning moves on to the next epoch when the checkpoint closed one; the state then
        # describes an epoch that is over and the new one starts from its first batch
        if resume is not None and resume[0] == sampler.epoch and resume[1] < len(self):
            skip = resume[1]
            assert self.batch_size is not None
            sampler.start = skip * self.batch_size
        self._served = skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

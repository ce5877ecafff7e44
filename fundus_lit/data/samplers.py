"""Samplers that hand the epoch to the dataset, so per-sample random draws (the category behind a
prompt) are reproducible by seed, epoch and index, whatever worker or rank loads the sample."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import torch
from torch.utils.data import DistributedSampler

from fundus_lit.core.distributed import world


class EpochSampler(DistributedSampler):
    """Shuffled indices, a distinct share per rank, yielded as ``(index, epoch)`` keys.

    It subclasses ``DistributedSampler`` so Lightning leaves it as it is under DDP (and calls
    ``set_epoch`` each epoch) instead of wrapping it in a second distributed sampler.

    ``start`` skips that many of this rank's keys in the next pass only (a mid-epoch resume, see
    :class:`~fundus_lit.data.resumable.ResumableLoader`); the keys after them are unchanged.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True):
        rank, replicas = world()
        # DistributedSampler reads only len(dataset); a range stands in for it.
        super().__init__(range(size), replicas, rank, shuffle, seed, drop_last)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        start, self.start = self.start, 0
        return islice(self._keys(), start, None)

    def _keys(self) -> Iterator[tuple[int, int, int]]:
        # (index, epoch, position in the epoch's global stream): the position tells apart two
        # draws of one record, so anything drawn per sample (an expert partner) stays independent
        for k, index in enumerate(super().__iter__()):
            yield int(index), self.epoch, self.rank + k * self.num_replicas


def permutation(size: int, seed: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()


class DatasetBalancedSampler(EpochSampler):
    """Uniform over source datasets, uniform with replacement inside each (FLAIR's balancing).

    Each epoch draws ``epoch_length`` keys from a generator seeded by ``(seed, epoch)``, the same
    on every rank; rank r takes draws r, r + R, r + 2R, ..., so shares are disjoint positions of one
    reproducible stream.

    Args:
        datasets: Dataset name of every record, in record order.
        epoch_length: Draws per epoch over all ranks; defaults to the number of records.
        seed: Seed of the draws.
    """

    def __init__(self, datasets: list[str], epoch_length: int | None = None, seed: int = 0):
        super().__init__(len(datasets), shuffle=True, seed=seed, drop_last=True)
        groups: dict[str, list[int]] = {}
        for index, name in enumerate(datasets):
            groups.setdefault(name, []).append(index)
        self.groups = [torch.tensor(groups[name]) for name in sorted(groups)]
        total = epoch_length or len(datasets)
        self.num_samples = total // self.num_replicas
        self.total_size = self.num_samples * self.num_replicas

    def _keys(self) -> Iterator[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        which = torch.randint(len(self.groups), (self.total_size,), generator=g)
        pick = torch.rand(self.total_size, generator=g)
        for position in range(self.rank, self.total_size, self.num_replicas):
            members = self.groups[int(which[position])]
            yield int(members[int(pick[position] * len(members))]), self.epoch, position

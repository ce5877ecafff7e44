"""Samplers that hand the epoch to the dataset, so per-sample random draws (the category behind a
prompt) are reproducible by seed, epoch and index, whatever worker or rank loads the sample."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from fundus_lit.objectives.distributed import world


class EpochSampler(DistributedSampler):
    """Shuffled indices, a distinct share per rank, yielded as ``(index, epoch)`` keys.

    It subclasses ``DistributedSampler`` so Lightning leaves it as it is under DDP (and calls
    ``set_epoch`` each epoch) instead of wrapping it in a second distributed sampler.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True):
        rank, replicas = world()
        # DistributedSampler reads only len(dataset); a range stands in for it.
        super().__init__(range(size), replicas, rank, shuffle, seed, drop_last)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in super().__iter__():
            yield int(index), self.epoch


def permutation(size: int, seed: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()

"""A distributed sampler that tells the dataset which epoch it is serving."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(epoch, index)`` so random crops change reproducibly per epoch.

    Each rank gets a disjoint share of a permutation drawn from ``seed + epoch`` (Lightning calls ``set_epoch``);
    being a ``DistributedSampler``, Lightning does not wrap or replace it under DDP.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for index in super().__iter__():
            yield self.epoch, index

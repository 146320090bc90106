"""A distributed sampler that tells the dataset which epoch it is serving, with optional bucketing."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(epoch, index)`` so random crops change reproducibly per epoch.

    Each rank gets a disjoint share of a permutation drawn from ``seed + epoch`` (Lightning calls ``set_epoch``);
    being a ``DistributedSampler``, Lightning does not wrap or replace it under DDP. When ``len(dataset)`` is not
    divisible by ``num_replicas``, the first indices of the permutation are repeated so every rank gets as many.

    With ``group_keys`` (e.g. each session's modality count) the rank's share is reordered by
    :func:`bucketed_order` so that each run of ``batch_size`` indices (one batch of the DataLoader's default
    batch sampler) shares one key where possible: less padding, the same sessions, still reshuffled per epoch.

    Args:
        dataset: The map-style dataset.
        num_replicas: Number of ranks.
        rank: This rank.
        shuffle: Draw a new permutation every epoch (else dataset order).
        seed: Seed of the permutations, identical on every rank.
        group_keys: One key per dataset index to bucket by, or ``None``.
        batch_size: The DataLoader's batch size; needed with ``group_keys``.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        group_keys: Sequence[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        if group_keys is not None and len(group_keys) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"group_keys has {len(group_keys)} entries for a dataset of {len(dataset)}")  # type: ignore[arg-type]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.group_keys = list(group_keys) if group_keys is not None else None
        self.batch_size = batch_size
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already trained) after a mid-epoch resume

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        if self.group_keys is not None:
            rng = random.Random(f"{self.seed}/{self.epoch}") if self.shuffle else None
            indices = bucketed_order(indices, self.group_keys, self.batch_size, rng)
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            indices = indices[self.resume_at[1] * self.batch_size :]  # the rest of the interrupted epoch
        self.resume_at = None
        for index in indices:
            yield self.epoch, index


class ShardSampler(DistributedSampler):
    """Evaluation sampler: every session exactly once over all ranks, in dataset order, as ``(0, index)`` keys.

    Rank ``r`` of ``R`` takes indices ``r, r + R, r + 2R, ...``, so shares differ by at most one and no session is
    repeated (``DistributedSampler`` pads ranks to equal length by repeating sessions, which would count them
    twice in per-case metrics and write their predictions twice). With fewer sessions than ranks, the ranks left
    without one get the last session again (an empty share would stall the ranks' metric synchronisation); its
    repeated rows are dropped when the per-case table is gathered.

    Being a ``DistributedSampler``, Lightning keeps it under DDP.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        size = len(dataset)  # type: ignore[arg-type]
        self.shard = list(range(rank, size, num_replicas)) or ([size - 1] if size else [])

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for index in self.shard:
            yield 0, index

    def __len__(self) -> int:
        return len(self.shard)


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position within the epoch is saved in checkpoints.

    Lightning stores ``state_dict()`` in every checkpoint and calls ``load_state_dict`` on resume; the sampler then
    skips the batches the interrupted run already trained on, so a resume in the middle of an epoch (a Slurm
    preemption) continues with the sessions an uninterrupted run would have seen next.

    Args:
        *args: Passed to ``DataLoader``; the position is restored when ``sampler`` is an :class:`EpochSampler`.
        position: Returns ``(epoch, batches trained in that epoch)``, read from the trainer's progress.
        **kwargs: Passed to ``DataLoader``.
    """

    def __init__(self, *args: Any, position: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        """The loader's position: ``epoch`` and ``batches`` read in it (saved in checkpoints by Lightning)."""
        epoch, batches = self.position()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from a position :meth:`state_dict` saved."""
        # Lightning swaps in a plain sampler for overfit_batches; that sampler has no position to restore
        if not isinstance(self.sampler, EpochSampler):
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved after the epoch's last batch: the resumed run starts the next epoch
            epoch, batches = epoch + 1, 0
        # Lightning creates the resumed iterator before it calls set_epoch, and workers draw indices at once
        self.sampler.set_epoch(epoch)
        self.sampler.resume_at = (epoch, batches) if batches else None


def bucketed_order(
    indices: Sequence[int], keys: Sequence[int], batch_size: int, rng: random.Random | None = None
) -> list[int]:
    """Reorder ``indices`` so that consecutive runs of ``batch_size`` share one key where possible.

    Full batches are cut from each key's indices (in their given order); the leftovers of all keys (fewer than
    ``batch_size`` per key), sorted by key, fill the remaining batches, so at most ``#keys`` batches mix keys
    and only the very last batch is short. The full batches are then shuffled by ``rng`` (kept in key order
    without one); the short batch stays last, so a batch sampler cutting the stream every ``batch_size`` indices
    gets exactly these batches.

    Args:
        indices: Dataset indices (one rank's share), already in shuffled order.
        keys: The key of every dataset index.
        batch_size: Indices per batch.
        rng: Shuffles the order of the batches; ``None`` keeps it.

    Returns:
        A permutation of ``indices``.
    """
    by_key: dict[int, list[int]] = defaultdict(list)
    for index in indices:
        by_key[keys[index]].append(index)
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for key in sorted(by_key):
        members = by_key[key]
        full = len(members) - len(members) % batch_size
        batches += [members[start:start + batch_size] for start in range(0, full, batch_size)]
        leftovers += members[full:]
    batches += [leftovers[start:start + batch_size] for start in range(0, len(leftovers), batch_size)]
    short = batches.pop() if batches and len(batches[-1]) < batch_size else None
    if rng is not None:
        rng.shuffle(batches)
    return [index for batch in batches + ([short] if short else []) for index in batch]

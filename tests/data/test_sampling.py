"""Sharding over ranks and DataLoader workers, per-epoch reshuffling, and bucketing by modality count."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from brainfm_lightning.data.sampling import EpochSampler, bucketed_order


class IndexDataset(Dataset):
    """Returns ``(epoch, index, worker id)`` instead of loading anything."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int, int]:
        worker = get_worker_info()
        return key[0], key[1], worker.id if worker is not None else -1


def _epoch(length: int, epoch: int, ranks: int = 2, seed: int = 0, **bucketing) -> dict[int, list[list[int]]]:
    """rank -> batches of indices served by a real 2-worker DataLoader for ``epoch``."""
    dataset, served = IndexDataset(length), {}
    for rank in range(ranks):
        sampler = EpochSampler(dataset, num_replicas=ranks, rank=rank, seed=seed, **bucketing)
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=bucketing.get("batch_size", 2), sampler=sampler, num_workers=2)
        batches = list(loader)
        assert {int(w) for batch in batches for w in batch[2]} == {0, 1}  # both workers served this rank
        assert {int(e) for batch in batches for e in batch[0]} == {epoch}
        served[rank] = [batch[1].tolist() for batch in batches]
    return served


def _flat(batches: list[list[int]]) -> list[int]:
    return [index for batch in batches for index in batch]


def test_ranks_and_workers_cover_every_session_once_per_epoch():
    first, second = _epoch(12, epoch=0), _epoch(12, epoch=1)
    for served in (first, second):
        shares = [_flat(served[rank]) for rank in (0, 1)]
        assert len(shares[0]) == len(shares[1]) == 6
        assert sorted(shares[0] + shares[1]) == list(range(12))
    assert _flat(first[0]) != _flat(second[0])  # reshuffled between epochs
    assert _epoch(12, epoch=1) == second  # the same seed and epoch give the same order
    assert _epoch(12, epoch=1, seed=5) != second


def test_an_odd_count_repeats_only_the_distributed_sampler_padding():
    shares = _epoch(11, epoch=2)
    served = _flat(shares[0]) + _flat(shares[1])
    counts = Counter(served)
    assert sorted(counts) == list(range(11))
    assert len(served) == 12 and sorted(counts.values()) == [1] * 10 + [2]
    generator = torch.Generator().manual_seed(0 + 2)  # DistributedSampler pads with the permutation's head
    assert counts.most_common(1)[0][0] == torch.randperm(11, generator=generator)[0].item()


def test_bucketed_order_groups_keys_and_keeps_the_short_batch_last():
    keys = [3, 1, 2, 1, 1, 3, 2, 1, 3, 1, 4]
    order = bucketed_order(list(range(11)), keys, batch_size=2, rng=random.Random(0))
    assert sorted(order) == list(range(11))
    batches = [order[i:i + 2] for i in range(0, 11, 2)]
    assert len(batches[-1]) == 1
    mixed = [b for b in batches[:-1] if len({keys[i] for i in b}) > 1]
    # per key: 1 -> 5 members (2 full batches + 1 left), 2 -> 2 (1 full), 3 -> 3 (1 full + 1 left), 4 -> 1 left
    assert len(batches) - 1 - len(mixed) == 2 + 1 + 1
    assert bucketed_order(list(range(11)), keys, 2, random.Random(0)) == order
    # no rng: full batches in key order, then the leftovers (9: key 1, 8: key 3, 10: key 4)
    assert bucketed_order(list(range(11)), keys, 2) == [1, 3, 4, 7, 2, 6, 0, 5, 9, 8, 10]


@pytest.mark.parametrize("length", [24, 23])
def test_bucketing_keeps_each_ranks_share_and_batches_by_modality_count(length):
    keys = [1 + (index * 7) % 4 for index in range(length)]  # modality counts 1..4
    plain = _epoch(length, epoch=0, batch_size=3)
    bucketed = _epoch(length, epoch=0, group_keys=keys, batch_size=3)
    for rank in (0, 1):
        share = _flat(bucketed[rank])
        assert sorted(share) == sorted(_flat(plain[rank]))  # the same sessions on the same rank
        assert len(bucketed[rank]) == len(plain[rank])  # and as many batches, on every rank
        homogeneous = sum(len({keys[i] for i in batch}) == 1 for batch in bucketed[rank] if len(batch) == 3)
        per_key = Counter(keys[i] for i in share)
        assert homogeneous >= sum(count // 3 for count in per_key.values())
    later = _epoch(length, epoch=1, group_keys=keys, batch_size=3)
    assert later != bucketed and _epoch(length, epoch=1, group_keys=keys, batch_size=3) == later


def test_sampler_rejects_bad_bucketing_arguments():
    with pytest.raises(ValueError, match="group_keys has 2 entries for a dataset of 3"):
        EpochSampler(IndexDataset(3), group_keys=[1, 2])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        EpochSampler(IndexDataset(3), group_keys=[1, 2, 3], batch_size=0)

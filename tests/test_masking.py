"""Padding-aware masking: never keeps padding, keeps the exact per-session count."""

import pytest
import torch

from brainfm_lightning.masking import padding_aware_mask, visible_index


def test_keep_is_inside_valid_and_has_exact_counts():
    tokens_per_modality = 8
    modality_counts = torch.tensor([4, 1, 2, 3, 1, 4])
    slots = torch.arange(4).repeat_interleave(tokens_per_modality)
    valid = slots[None, :] < modality_counts[:, None]
    generator = torch.Generator().manual_seed(0)
    for ratio in (0.1, 0.5, 0.75, 0.9):
        keep = padding_aware_mask(valid, ratio, generator=generator)
        assert not (keep & ~valid).any()
        for row in range(valid.shape[0]):
            count = int(valid[row].sum())
            assert int(keep[row].sum()) == max(1, round((1 - ratio) * count))


def test_same_fraction_whatever_the_batch_partner():
    valid = torch.zeros(2, 40, dtype=torch.bool)
    valid[0, :40] = True  # 4 modalities x 10 tokens
    valid[1, :10] = True  # 1 modality
    keep = padding_aware_mask(valid, 0.75)
    assert keep.sum(1).tolist() == [10, 2]  # round(2.5) == 2, half to even like Python


def test_at_least_one_token_is_kept():
    valid = torch.zeros(1, 10, dtype=torch.bool)
    valid[0, 0] = True
    assert padding_aware_mask(valid, 0.9).sum() == 1


def test_uniform_over_valid_positions():
    valid = torch.ones(1, 6, dtype=torch.bool)
    valid[0, 4:] = False
    generator = torch.Generator().manual_seed(1)
    counts = sum(padding_aware_mask(valid, 0.5, generator=generator).float() for _ in range(4000))
    assert counts[0, 4:].sum() == 0
    assert torch.allclose(counts[0, :4] / 4000, torch.full((4,), 0.5), atol=0.04)


def test_generator_makes_it_reproducible():
    valid = torch.ones(3, 30, dtype=torch.bool)
    first = padding_aware_mask(valid, 0.6, generator=torch.Generator().manual_seed(7))
    second = padding_aware_mask(valid, 0.6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_mask_ratio_outside_open_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        padding_aware_mask(torch.ones(1, 4, dtype=torch.bool), ratio)


def test_visible_index_gathers_kept_tokens_in_order():
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    index, is_visible = visible_index(keep)
    assert index[0].tolist() == [0, 2, 3]
    assert index[1, 0].item() == 1 and is_visible.tolist() == [[True, True, True], [True, False, False]]
    assert len(set(index[1].tolist())) == 3  # filler slots point at distinct positions

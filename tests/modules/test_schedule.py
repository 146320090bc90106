"""The warm-up rule and the weight-decay exemptions the three training modules share."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules.schedule import cosine_with_warmup, no_decay, parameter_groups, warmup_steps


def test_fractions_floor_the_written_fraction_of_all_steps_in_float64():
    fractions = np.round(np.arange(0.0, 1.0, 0.01, dtype=np.float64), 2)  # float64 values as a config holds them
    for total in (1, 7, 100, 333, 1000, 123_457):
        expected = [int(Fraction(str(value)) * total) for value in fractions]  # exact rational floor
        assert [warmup_steps(value, total) for value in fractions] == expected, total
    assert warmup_steps(np.float64(0.29), 100) == 29  # 0.29 * 100 is 28.999999999999996 in float64


@pytest.mark.parametrize("value, total, expected", [(1, 1000, 1), (1.0, 10, 1), (25, 10, 25), (12.7, 100, 12)])
def test_values_from_one_on_are_step_counts(value, total, expected):
    assert warmup_steps(value, total) == expected


def test_negative_warmup_is_rejected_naming_it():
    with pytest.raises(ValueError, match="warmup_steps must be >= 0, got -0.1"):
        warmup_steps(-0.1, 100)


def test_no_decay_on_biases_norms_embeddings_mask_tokens_and_cln_maps():
    net = ModalityMAE.from_preset("test", positions="crop")  # the learnable positional tables
    exempt = {name for name, param in net.named_parameters() if no_decay(name, param)}
    assert {"pos_embed", "decoder_pos_embed", "mask_token", "encoder.norm.to_scale_shift.weight"} <= exempt
    assert all(param.ndim >= 2 for name, param in net.named_parameters()
               if name not in exempt), "every decayed parameter is a weight matrix or kernel"
    decayed, skipped = parameter_groups(net, 0.05)
    assert decayed["weight_decay"] == 0.05 and skipped["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(skipped["params"]) == len(list(net.parameters()))


def test_frozen_parameters_are_left_out():
    layer = torch.nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    decayed, skipped = parameter_groups(layer, 0.1)
    assert decayed["params"] == [layer.weight] and skipped["params"] == []


def test_delayed_groups_wait_at_zero_then_ramp_to_the_common_schedule():
    total, warm, delay, ratio = 20, 4, 6, 0.1
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]]}], lr=2.0)
    scheduler = cosine_with_warmup(optimizer, total, warm, ratio, delays=[0, delay])
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    steps = np.arange(total, dtype=np.float64)
    common = np.where(steps < warm, (steps + 1) / warm, ratio + (1 - ratio) * 0.5 * (
        1 + np.cos(np.pi * np.clip((steps - warm) / (total - warm), 0, 1))))
    late = np.where(steps < delay, 0.0, np.minimum(1.0, (steps - delay + 1) / warm) * common)
    np.testing.assert_allclose(np.array(seen), 2.0 * np.stack([common, late], axis=1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("delays", [[0], [0, -1], [0, 1, 2]])
def test_delays_must_be_one_count_per_group(delays):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(2)]
    with pytest.raises(ValueError, match="delays must give a step count >= 0 for each of the 2"):
        cosine_with_warmup(torch.optim.SGD(groups, lr=1.0), 10, 2, delays=delays)

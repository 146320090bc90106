"""Conditional LayerNorm, Eq. (1)."""

import numpy as np
import torch

from brainfm_lightning.models import ConditionalLayerNorm


def test_identity_normalisation_at_init():
    cln = ConditionalLayerNorm(16, 8)
    x, cond = torch.randn(3, 5, 16) * 4 + 2, torch.randn(3, 5, 8)
    expected = torch.nn.functional.layer_norm(x, (16,), eps=cln.eps)
    assert torch.allclose(cln(x, cond), expected, atol=1e-6)


def test_matches_equation_one_in_float64():
    torch.manual_seed(0)
    cln = ConditionalLayerNorm(6, 4).double()
    with torch.no_grad():
        cln.to_scale_shift.weight.normal_()
        cln.to_scale_shift.bias.normal_()
    h, e = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    weight, bias = cln.to_scale_shift.weight.detach().numpy(), cln.to_scale_shift.bias.detach().numpy()
    for row in range(2):
        scale_shift = weight @ e[row].numpy() + bias
        gamma, beta = scale_shift[:6], scale_shift[6:]
        hv = h[row].numpy()
        expected = gamma * (hv - hv.mean()) / np.sqrt(hv.var() + cln.eps) + beta
        assert np.allclose(cln(h[row], e[row]).detach().numpy(), expected, atol=1e-10)


def test_per_slot_conditions_with_index_equal_per_token_conditions():
    torch.manual_seed(1)
    cln = ConditionalLayerNorm(8, 3)
    with torch.no_grad():
        cln.to_scale_shift.weight.normal_()
    x, per_slot = torch.randn(2, 6, 8), torch.randn(2, 4, 3)
    index = torch.tensor([[0, 0, 1, 1, 3, 3], [2, 2, 2, 0, 0, 0]])
    per_token = per_slot.gather(1, index[..., None].expand(-1, -1, 3))
    assert torch.allclose(cln(x, per_slot, index), cln(x, per_token), atol=1e-6)


def test_depends_on_the_modality_after_a_training_step():
    torch.manual_seed(2)
    cln = ConditionalLayerNorm(8, 4)
    x, cond_a, cond_b = torch.randn(10, 8), torch.randn(1, 4).expand(10, 4), torch.randn(1, 4).expand(10, 4)
    assert torch.allclose(cln(x, cond_a), cln(x, cond_b))
    optimizer = torch.optim.SGD(cln.parameters(), lr=0.1)
    cln(x, cond_a).pow(3).sum().backward()
    optimizer.step()
    assert not torch.allclose(cln(x, cond_a), cln(x, cond_b), atol=1e-4)

"""Pad-free compute gives the padded path's numbers: outputs and gradients on the same weights, masks, inputs."""

import pytest
import torch

from brainfm_lightning.losses import covariance_loss, masked_mse_loss, variance_loss
from brainfm_lightning.models import ModalityMAE, patchify
from brainfm_lightning.models.packing import Packing


def test_packing_round_trip_and_groups():
    valid = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    packing = Packing.from_valid(valid)
    assert packing.groups == [(2, 2), (1, 3), (1, 4)]
    x = torch.randn(4, 4, 5)
    packed = packing.pack(x)
    assert packed.shape == (int(valid.sum()), 5)
    restored = packing.unpack(packed)
    assert torch.equal(restored[valid], x[valid]) and torch.equal(restored[~valid], torch.zeros_like(x[~valid]))


def run(net, batch, seed):
    images, embeddings, present = batch
    out = net(images, embeddings, present, generator=torch.Generator().manual_seed(seed))
    z = out.visible_features()
    loss = masked_mse_loss(out.pred_masked, out.target_masked) + 0.1 * variance_loss(z) + 0.003 * covariance_loss(z)
    net.zero_grad()
    loss.backward()
    return out, loss.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}


@pytest.mark.parametrize("present_rows", [
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]],  # mixed 1..4 modalities
    [[1, 1, 1], [1, 1, 1]],  # uniform
    [[0, 1, 1], [1, 0, 1]],  # present slots that are not a prefix
])
def test_pad_free_equals_padded_outputs_and_gradients(present_rows):
    torch.manual_seed(0)
    pad_free = ModalityMAE.from_preset("test", pad_free=True)
    padded = ModalityMAE.from_preset("test", pad_free=False)
    padded.load_state_dict(pad_free.state_dict())
    present = torch.tensor(present_rows, dtype=torch.bool)
    batch = (torch.randn(*present.shape, *pad_free.img_size), torch.randn(*present.shape, 384), present)
    out_a, loss_a, grads_a = run(pad_free, batch, seed=3)
    out_b, loss_b, grads_b = run(padded, batch, seed=3)
    assert torch.equal(out_a.keep, out_b.keep)
    valid = out_a.valid
    assert torch.allclose(out_a.pred[valid], out_b.pred[valid], atol=1e-5, rtol=1e-4)
    assert torch.allclose(out_a.visible_features(), out_b.visible_features(), atol=1e-5, rtol=1e-4)
    assert torch.allclose(loss_a, loss_b, atol=1e-6, rtol=1e-5)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-5, rtol=1e-3), name
    expected_target = patchify(batch[0].masked_fill(~present[:, :, None, None, None], 0.0), pad_free.patch_size)
    for out in (out_a, out_b):  # the masked-only reconstruction is the full one at the masked patches
        assert torch.allclose(out.pred_masked, out.pred[out.is_masked], atol=1e-6)
        assert torch.equal(out.target_masked, expected_target[out.is_masked])
        assert torch.equal(out.target, expected_target)
        assert not out.pred[~valid].any()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    plain = ModalityMAE.from_preset("test")
    checkpointed = ModalityMAE.from_preset("test", gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    present = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    batch = (torch.randn(2, 2, *plain.img_size), torch.randn(2, 2, 384), present)
    _, loss_a, grads_a = run(plain, batch, seed=0)
    _, loss_b, grads_b = run(checkpointed, batch, seed=0)
    assert torch.allclose(loss_a, loss_b)
    assert all(torch.allclose(g, grads_b[n], atol=1e-6) for n, g in grads_a.items())


def test_compiled_blocks_give_the_same_gradients_and_do_not_recompile_per_batch():
    from torch._dynamo.utils import counters

    torch.manual_seed(2)
    plain = ModalityMAE.from_preset("test")
    compiled = ModalityMAE.from_preset("test")
    compiled.load_state_dict(plain.state_dict())
    # "eager" traces with dynamo (graph breaks, guards, dynamic shapes) without generating code: fast on a CPU
    compiled.encoder.compile_blocks(backend="eager")
    compiled.decoder.compile_blocks(backend="eager")
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints keep their keys
    layouts = [[[1, 0, 0], [1, 1, 1]], [[1, 1, 0], [1, 0, 0], [1, 1, 1]], [[1, 1, 1]] * 2, [[1, 1, 0]] * 3,
               [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]]
    graphs = []
    for rows in layouts:
        present = torch.tensor(rows, dtype=torch.bool)
        batch = (torch.randn(*present.shape, *plain.img_size), torch.randn(*present.shape, 384), present)
        _, loss_a, grads_a = run(plain, batch, seed=5)
        _, loss_b, grads_b = run(compiled, batch, seed=5)
        assert torch.allclose(loss_a, loss_b)
        assert all(torch.allclose(g, grads_b[n], atol=1e-6) for n, g in grads_a.items())
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] > 0 and graphs[-1] == graphs[-2]  # a new mix of session lengths reuses the traced graphs

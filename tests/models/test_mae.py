"""ModalityMAE: shapes, presets, padding invariance, gradients, argument checks."""

import pytest
import torch

from brainfm_lightning.losses import covariance_loss, masked_mse_loss, variance_loss
from brainfm_lightning.models import PRESETS, ModalityMAE, patchify, unpatchify


def make_batch(net: ModalityMAE, present_rows, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    present = torch.tensor(present_rows, dtype=torch.bool)
    b, m = present.shape
    images = torch.randn(b, m, *net.img_size, generator=generator)
    embeddings = torch.randn(b, m, net.modality_dim, generator=generator)
    return images, embeddings, present


def total_loss(net, images, embeddings, present, seed=0):
    out = net(images, embeddings, present, generator=torch.Generator().manual_seed(seed))
    z = out.visible_features()
    return masked_mse_loss(out.pred_masked, out.target_masked) + 0.1 * variance_loss(z) + 0.003 * covariance_loss(z)


@pytest.mark.parametrize("preset", ["test", "small"])
def test_preset_output_shapes_and_finite(preset):
    net = ModalityMAE.from_preset(preset, img_size=32)
    images, embeddings, present = make_batch(net, [[1, 1, 0], [1, 0, 0]])
    out = net(images, embeddings, present)
    n = 3 * net.tokens_per_modality
    assert out.pred.shape == out.target.shape == (2, n, 16**3)
    assert out.keep.shape == out.valid.shape == (2, n)
    assert torch.isfinite(out.pred).all() and torch.isfinite(out.features).all()
    assert out.visible_features().shape == (int(out.keep.sum()), net.encoder.norm.dim)


def test_every_parameter_receives_a_gradient():
    net = ModalityMAE.from_preset("test")
    images, embeddings, present = make_batch(net, [[1, 1, 1], [1, 0, 0]])
    total_loss(net, images, embeddings, present).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("pad_free", [True, False])
def test_padded_slot_values_change_neither_loss_nor_gradients(pad_free):
    net = ModalityMAE.from_preset("test", pad_free=pad_free)
    images, embeddings, present = make_batch(net, [[1, 1, 0], [1, 0, 0]])
    results = []
    for fill in (0.0, 1e3, float("nan")):
        filled_images, filled_embeddings = images.clone(), embeddings.clone()
        filled_images[~present] = fill
        filled_embeddings[~present] = fill
        net.zero_grad()
        loss = total_loss(net, filled_images, filled_embeddings, present)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, results[0][1]))


def test_sessions_do_not_influence_each_other():
    net = ModalityMAE.from_preset("test").eval()
    images, embeddings, present = make_batch(net, [[1, 1], [1, 0]])
    alone = net.encode(images[:1], embeddings[:1], present[:1])[0]
    together = net.encode(images, embeddings, present)[0][:1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_encode_returns_every_valid_token():
    net = ModalityMAE.from_preset("test")
    images, embeddings, present = make_batch(net, [[1, 1, 0]])
    tokens, valid = net.encode(images, embeddings, present)
    assert tokens.shape == (1, 3 * net.tokens_per_modality, 48)
    assert valid.sum() == 2 * net.tokens_per_modality


def test_encoder_depends_on_the_modality_after_a_training_step():
    torch.manual_seed(0)
    net = ModalityMAE.from_preset("test")
    images, embeddings, present = make_batch(net, [[1]])
    other = torch.randn_like(embeddings)
    norm = net.encoder.norm
    x = torch.randn(1, 4, 48)
    index = torch.zeros(1, 4, dtype=torch.long)
    assert torch.allclose(norm(x, embeddings, index), norm(x, other, index))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    total_loss(net, images, embeddings, present).backward()
    optimizer.step()
    assert not torch.allclose(norm(x, embeddings, index), norm(x, other, index), atol=1e-5)


def test_patchify_round_trip_and_order():
    images = torch.randn(2, 3, 8, 12, 4)
    patches = patchify(images, (4, 4, 2))
    assert patches.shape == (2, 3 * 2 * 3 * 2, 32)
    assert torch.equal(patches[0, 0], images[0, 0, :4, :4, :2].reshape(-1))
    assert torch.equal(unpatchify(patches, 3, (2, 3, 2), (4, 4, 2)), images)


def test_size_arguments_accept_tuples():
    net = ModalityMAE.from_preset("test", img_size=(32, 48, 16), patch_size=(16, 16, 8))
    assert net.grid == (2, 3, 2)
    images, embeddings, present = make_batch(net, [[1]])
    assert net(images, embeddings, present).pred.shape == (1, 12, 16 * 16 * 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=0.0), "mask_ratio"),
        (dict(img_size=40), "not divisible by patch_size"),
        (dict(preset="huge"), "unknown model preset 'huge'"),
        (dict(embed_dim=50, num_heads=3), "not divisible by num_heads=3"),
        (dict(patch_size=(16, 16)), "patch_size"),
    ],
)
def test_bad_arguments_fail_at_once_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModalityMAE(**({"preset": "test"} | kwargs))


def test_presets_have_the_documented_sizes():
    base = PRESETS["base"]
    assert (base["embed_dim"], base["depth"], base["num_heads"]) == (768, 12, 12)
    assert (base["decoder_embed_dim"], base["decoder_depth"], base["img_size"], base["patch_size"]) == (512, 8, 128, 16)

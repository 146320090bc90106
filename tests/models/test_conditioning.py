"""How the modality embedding enters the network: standardisation, CLN on or off, names shuffled in pretraining."""

from types import SimpleNamespace

import torch
from random_inputs import random_inputs
from torch.nn import functional as F

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules.pretrain import MAEPretrainModule, shuffled_names


def test_modality_norm_makes_the_network_blind_to_the_embedding_scale_only():
    torch.manual_seed(0)
    net = ModalityMAE.from_preset("test", modality_norm=True).eval()
    images, embeddings, present = random_inputs(net, [[1, 1, 0]])
    unit = F.normalize(embeddings, dim=-1)  # MiniLM-like unit vectors; BioBERT's CLS vectors are ~10x longer
    with torch.no_grad():
        tokens, _ = net.encode(images, unit, present)
        scaled, _ = net.encode(images, unit * 10.0, present)
        other, _ = net.encode(images, unit.flip(1), present)
    torch.testing.assert_close(tokens, scaled, atol=1e-4, rtol=1e-4)
    assert (tokens - other).abs().max() > 1e-2
    # the standardised embedding is (e - mean) / std over features, as float64 NumPy computes it
    row = unit[0, 0].double().numpy()
    standard = (row - row.mean()) / (row.var() + 1e-8) ** 0.5
    captured = {}

    def keep_input(module, args, out):
        captured["x"] = args[0]

    handle = net.modality_proj.register_forward_hook(keep_input)
    with torch.no_grad():
        net.encode(images, unit, present)
    handle.remove()
    torch.testing.assert_close(captured["x"][0, 0].double(), torch.from_numpy(standard), atol=1e-5, rtol=1e-5)
    assert torch.equal(captured["x"][0, 2], torch.zeros(net.modality_dim))  # a padded slot stays zero


def test_raw_modality_embeddings_without_modality_norm():
    torch.manual_seed(0)
    net = ModalityMAE.from_preset("test").eval()  # the default feeds the embeddings as they are
    images, embeddings, present = random_inputs(net, [[1, 1, 0]])
    with torch.no_grad():
        tokens, _ = net.encode(images, embeddings, present)
        scaled, _ = net.encode(images, embeddings * 10.0, present)
    assert (tokens - scaled).abs().max() > 1e-2


def test_without_cln_every_norm_ignores_the_modality_and_its_maps_stay_at_zero():
    torch.manual_seed(0)
    net = ModalityMAE.from_preset("test", conditioning="none")
    images, embeddings, present = random_inputs(net, [[1, 1, 0]])
    with torch.no_grad():
        for name, param in net.named_parameters():  # CLN maps that had learnt something
            if name.endswith("to_scale_shift.weight"):
                param.normal_()
    captured = {}

    def keep(module, args, out):
        captured["input"], captured["output"] = args[0], out

    hook = net.encoder.blocks[0].norm1.register_forward_hook(keep)
    with torch.no_grad():
        net.encode(images, embeddings, present)
    hook.remove()
    # the condition is zero, so gamma and beta are the maps' biases (1 and 0): the plain LayerNorm of the input
    expected = F.layer_norm(captured["input"], (captured["input"].shape[-1],), eps=1e-6)
    torch.testing.assert_close(captured["output"], expected, atol=1e-5, rtol=1e-5)
    out = net(images, embeddings, present, generator=torch.Generator().manual_seed(0))
    out.pred_masked.square().mean().backward()
    cln_grads = [p.grad for n, p in net.named_parameters() if n.endswith("to_scale_shift.weight")]
    assert cln_grads and all(g is not None and not g.any() for g in cln_grads)
    conditioned = ModalityMAE.from_preset("test")
    conditioned.load_state_dict(net.state_dict())
    with torch.no_grad():
        changed = conditioned.encode(images, embeddings, present)[0] - net.encode(images, embeddings, present)[0]
    assert changed.abs().max() > 1e-3  # the same weights with CLN on do read the modality


def test_bad_conditioning_is_named():
    import pytest

    with pytest.raises(ValueError, match="conditioning must be 'cln' or 'none'"):
        ModalityMAE.from_preset("test", conditioning="film")


def test_shuffled_names_permute_present_names_only():
    rows = [["T1", "T2", "FLAIR", ""], ["PD", "", "", ""]]
    seen = set()
    for seed in range(20):
        shuffled = shuffled_names(rows, torch.Generator().manual_seed(seed))
        assert sorted(shuffled[0]) == sorted(rows[0]) and shuffled[0][3] == ""
        assert shuffled[1] == rows[1]
        seen.add(tuple(shuffled[0]))
    assert len(seen) == 6  # every order of three names turns up


def test_pretraining_with_shuffled_names_embeds_permuted_names_in_training_only(monkeypatch):
    monkeypatch.setattr("brainfm_lightning.modules.pretrain.is_logging_step", lambda trainer: False)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), shuffle_modality_names=True)
    module._trainer = SimpleNamespace(global_step=0, global_rank=0)  # what training_step reads of a Trainer
    seen = []
    module.modality_embeddings = lambda names, like: (seen.append([list(r) for r in names]),
                                                       torch.randn(len(names), len(names[0]), 384))[1]
    images = torch.randn(1, 3, *module.net.img_size)
    names = [["T1", "T2", "PD"]]
    data = {"images": images, "present": torch.ones(1, 3, dtype=torch.bool), "modalities": names,
            "session_ids": ["s"]}
    module.log = module.log_dict = lambda *a, **k: None
    for step in range(8):
        module.training_step(data, step)
    assert all(sorted(s[0]) == ["PD", "T1", "T2"] for s in seen)
    assert any(s[0] != names[0] for s in seen)
    assert data["modalities"] == [["T1", "T2", "PD"]]  # the batch itself is not changed
    seen.clear()
    module.validation_step(data, 0)
    assert seen == [names]


def test_modality_init_gain_scales_the_modality_projections_only():
    torch.manual_seed(0)
    plain = ModalityMAE.from_preset("test")
    torch.manual_seed(0)
    strong = ModalityMAE.from_preset("test", modality_init_gain=10.0)
    for name in ("modality_proj", "decoder_modality_proj"):
        a, b = getattr(plain, name).weight, getattr(strong, name).weight
        fan_in, fan_out = a.shape[1], a.shape[0]
        bound = 10.0 * (6.0 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform bound times the gain
        assert b.abs().max() <= bound and b.abs().max() > 0.9 * bound
        assert b.std() / a.std() > 8.0
    torch.testing.assert_close(plain.patch_embed.proj.weight, strong.patch_embed.proj.weight)
    assert strong.config["modality_init_gain"] == 10.0


def test_bad_modality_init_gain_is_named():
    import pytest

    with pytest.raises(ValueError, match="modality_init_gain must be > 0"):
        ModalityMAE.from_preset("test", modality_init_gain=0.0)

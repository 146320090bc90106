"""ModalityUNETR's full-resolution paths (``stem``) and fusions: shapes, what each one sees, fusion, export."""

import numpy as np
import pytest
import torch
from random_inputs import random_inputs

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.models.seg_head import ModalityUNETR, MomentMerge, fuse_modalities, mean_over_present


def segmenter(stem: str, patch_size: int = 16, seed: int = 0, fusion: str = "mean") -> ModalityUNETR:
    torch.manual_seed(seed)
    return ModalityUNETR(ModalityMAE.from_preset("test", patch_size=patch_size), num_classes=3, feature_size=4,
                         stem=stem, fusion=fusion).eval()


def perturb_merges(model: ModalityUNETR) -> None:
    """Move every :class:`MomentMerge` away from its mean-only start, so that the variance counts."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MomentMerge):
                module.weight.add_(torch.randn_like(module.weight) * 0.2)
                module.bias.add_(torch.randn_like(module.bias) * 0.1)


@pytest.mark.parametrize("stem", ["mean", "per_sequence", "conditioned", "tokens"])
@pytest.mark.parametrize("patch_size", [8, 16])
def test_every_stem_gives_full_resolution_logits_and_trains_every_head_weight(stem, patch_size):
    model = segmenter(stem, patch_size).train()
    images, embeddings, present = random_inputs(model.net, [[1, 1, 0], [0, 1, 0]])
    logits = model(images, embeddings, present)
    assert logits.shape == (2, 3, *model.net.img_size)
    assert len(model.feature_layers) == len(model.decoder.skips) + 1
    logits.square().mean().backward()
    silent = [n for n, p in model.named_parameters()
              if not n.startswith("net.") and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert silent == []
    assert (model.decoder.stem is None) == (stem == "tokens")


@pytest.mark.parametrize("stem", ["mean", "per_sequence", "conditioned", "tokens"])
def test_only_the_tokens_stem_sees_the_images_through_the_encoder_alone(stem):
    """With patch and modality projections zeroed the tokens ignore the images: so must the ``tokens`` head."""
    model = segmenter(stem)
    with torch.no_grad():
        model.net.patch_embed.proj.weight.zero_()
        model.net.patch_embed.proj.bias.zero_()
    images, embeddings, present = random_inputs(model.net, [[1, 1, 1]])
    with torch.no_grad():
        first = model(images, embeddings, present)
        other = model(images.flip(-1) * 3.0 + 1.0, embeddings, present)
    if stem == "tokens":
        torch.testing.assert_close(first, other)
    else:
        assert (first - other).abs().max() > 1e-3


def test_per_sequence_stem_is_the_mean_of_the_stem_on_each_present_sequence():
    model = segmenter("per_sequence")
    images, _, present = random_inputs(model.net, [[1, 0, 1], [0, 1, 0]])
    images[~present] = float("nan")  # padded slots are never computed
    decoder = model.decoder
    with torch.no_grad():
        fused = decoder._per_slot_stem(images, present)
        expected = torch.stack([
            (decoder.stem(images[0, 0][None, None]) + decoder.stem(images[0, 2][None, None]))[0] / 2,
            decoder.stem(images[1, 1][None, None])[0],
        ])
    torch.testing.assert_close(fused, expected)


def test_conditioned_stem_scales_and_shifts_each_sequence_by_its_embedding_before_the_mean():
    """FiLM against a direct float64 computation: ``mean_m(stem(x_m) * (1 + a(e_m)) + b(e_m))`` over present m."""
    model = segmenter("conditioned").double()
    images, embeddings, present = random_inputs(model.net, [[1, 0, 1], [0, 1, 0]])
    images, embeddings = images.double(), embeddings.double()
    with torch.no_grad():
        torch.nn.init.normal_(model.stem_film.weight, std=0.2)
        torch.nn.init.normal_(model.stem_film.bias, std=0.2)
        film = model.stem_film(embeddings)
        fused = model.decoder._per_slot_stem(images, present, film)
        f = model.feature_size

        def modulated(b: int, m: int) -> torch.Tensor:
            features = model.decoder.stem(images[b, m][None, None])[0]
            scale, shift = film[b, m, :f], film[b, m, f:]
            return features * (1 + scale[:, None, None, None]) + shift[:, None, None, None]

        expected = torch.stack([(modulated(0, 0) + modulated(0, 2)) / 2, modulated(1, 1)])
    torch.testing.assert_close(fused, expected)


def test_conditioned_stem_starts_as_per_sequence_and_then_reads_the_names():
    """Zero-initialised FiLM: the same logits as ``per_sequence`` with the same weights; once trained away from
    zero, renaming the sequences changes the output (``per_sequence`` cannot tell them apart in its image path)."""
    plain, conditioned = segmenter("per_sequence"), segmenter("conditioned")
    conditioned.load_state_dict(plain.state_dict(), strict=False)
    images, embeddings, present = random_inputs(plain.net, [[1, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(conditioned(images, embeddings, present), plain(images, embeddings, present))
        torch.nn.init.normal_(conditioned.stem_film.weight, std=0.5)
        swapped = embeddings[:, [1, 0, 2]]
        full_res = conditioned.decoder._per_slot_stem(images, present, conditioned.stem_film(embeddings))
        renamed = conditioned.decoder._per_slot_stem(images, present, conditioned.stem_film(swapped))
        assert (full_res - renamed).abs().max() > 1e-3
        torch.testing.assert_close(plain.decoder._per_slot_stem(images, present),
                                   plain.decoder._per_slot_stem(images[:, [1, 0, 2]], present))


def test_slot_order_does_not_matter_for_any_stem():
    images, embeddings, present = random_inputs(ModalityMAE.from_preset("test"), [[1, 1, 0]])
    order = [1, 0, 2]
    for stem in ("mean", "per_sequence", "conditioned", "tokens"):
        model = segmenter(stem)
        if model.stem_film is not None:  # a FiLM that differs between the slots
            torch.nn.init.normal_(model.stem_film.weight, std=0.1)
        with torch.no_grad():
            torch.testing.assert_close(model(images, embeddings, present),
                                       model(images[:, order], embeddings[:, order], present[:, order]),
                                       atol=1e-5, rtol=1e-4)


def test_mean_stem_feeds_the_mean_of_present_sequences():
    images = torch.arange(2 * 3 * 2 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2, 2)
    present = torch.tensor([[True, False, True], [False, True, False]])
    mean = mean_over_present(images.masked_fill(~present[..., None, None, None], float("nan")), present)
    torch.testing.assert_close(mean[0, 0], (images[0, 0] + images[0, 2]) / 2)
    torch.testing.assert_close(mean[1, 0], images[1, 1])


def test_bad_stem_and_layer_count_are_named():
    net = ModalityMAE.from_preset("test")
    with pytest.raises(ValueError, match="stem must be one of"):
        ModalityUNETR(net, stem="average")
    with pytest.raises(ValueError, match=r"feature_layers needs 4 encoder depths .*stem='tokens'"):
        ModalityUNETR(net, feature_layers=[1, 1, 2], stem="tokens")
    with pytest.raises(ValueError, match="fusion must be one of .*'median'"):
        ModalityUNETR(net, fusion="median")


@pytest.mark.parametrize("stem", ["per_sequence", "conditioned", "tokens"])
def test_exported_segmenter_keeps_its_stem(tmp_path, stem):
    model = segmenter(stem)
    if model.stem_film is not None:
        torch.nn.init.normal_(model.stem_film.weight, std=0.1)
    model.save_pretrained(tmp_path)
    loaded = ModalityUNETR.from_pretrained(tmp_path).eval()
    assert loaded.stem == stem
    images, embeddings, present = random_inputs(model.net, [[1, 0, 1]])
    with torch.no_grad():
        assert torch.equal(loaded(images, embeddings, present), model(images, embeddings, present))


def test_fused_tokens_are_the_mean_and_variance_over_present_sequences_as_numpy_computes_them():
    """``fuse_modalities(variance=True)`` against float64 NumPy, with NaN in the padded slots."""
    generator = torch.Generator().manual_seed(3)
    grid, dim = (2, 3, 2), 5
    length = 12
    valid_slots = np.array([[True, False, True, True], [False, True, False, False]])
    tokens = torch.randn(2, 4 * length, dim, generator=generator, dtype=torch.float64)
    valid = torch.from_numpy(np.repeat(valid_slots, length, axis=1))
    fused = fuse_modalities(tokens.masked_fill(~valid[..., None], float("nan")), valid, grid, variance=True)
    assert fused.shape == (2, 2 * dim, *grid)
    per_slot = tokens.numpy().reshape(2, 4, length, dim)
    for b in range(2):
        present = per_slot[b, valid_slots[b]]  # [m, L, D]
        expected = np.concatenate([present.mean(0), present.var(0)], -1)  # population variance: 0 for one slot
        np.testing.assert_allclose(fused[b].reshape(2 * dim, length).T.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(fused[:, :dim], fuse_modalities(tokens.masked_fill(~valid[..., None], 0.0), valid, grid))
    assert fused[1, dim:].abs().max() == 0


def test_moment_merge_starts_as_the_mean():
    merge = MomentMerge(3)
    moments = torch.randn(2, 6, 2, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(merge(moments), moments[:, :3])


@pytest.mark.parametrize("stem", ["mean", "per_sequence", "conditioned", "tokens"])
def test_mean_var_fusion_starts_as_the_mean_and_then_reads_the_spread_between_sequences(stem):
    """Same weights: the same logits as ``fusion="mean"`` at initialisation; once the merges move, two sessions whose
    sequences have the same mean but another spread get other logits."""
    plain, moments = segmenter(stem), segmenter(stem, fusion="mean_var")
    missing, unexpected = moments.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all("merge" in k for k in missing)
    images, embeddings, present = random_inputs(plain.net, [[1, 1, 0], [0, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(moments(images, embeddings, present), plain(images, embeddings, present))
        perturb_merges(moments)
        assert (moments(images, embeddings, present) - plain(images, embeddings, present)).abs().max() > 1e-3


def test_mean_var_stem_merges_the_mean_and_variance_of_each_sequences_stem_features():
    """The per-sequence stem's fusion against a direct float64 computation: ``merge([mean_m f_m, var_m f_m])``."""
    model = segmenter("per_sequence", fusion="mean_var").double()
    perturb_merges(model)
    images, _, present = random_inputs(model.net, [[1, 0, 1], [0, 1, 0]])
    images = images.double()
    decoder = model.decoder
    with torch.no_grad():
        fused = decoder._per_slot_stem(images.masked_fill(~present[..., None, None, None], float("nan")), present)
        expected = []
        for b in range(2):
            features = np.stack([decoder.stem(images[b, m][None, None])[0].numpy()
                                 for m in range(3) if present[b, m]])
            moments = np.concatenate([features.mean(0), features.var(0)], 0)  # [2F, *S]
            weight = decoder.stem_merge.weight[:, :, 0, 0, 0].numpy()
            expected.append(np.einsum("oc,c...->o...", weight, moments)
                            + decoder.stem_merge.bias.numpy()[:, None, None, None])
    np.testing.assert_allclose(fused.numpy(), np.stack(expected), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stem", ["per_sequence", "tokens"])
def test_mean_var_fusion_trains_every_head_weight_and_ignores_slot_order(stem):
    model = segmenter(stem, fusion="mean_var").train()
    assert (model.decoder.stem_merge is not None) == (stem == "per_sequence")
    assert len(model.token_merges) == len(model.feature_layers)
    images, embeddings, present = random_inputs(model.net, [[1, 1, 0], [0, 1, 0]])
    model(images, embeddings, present).square().mean().backward()
    silent = [n for n, p in model.named_parameters()
              if not n.startswith("net.") and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert silent == []
    model.eval()
    perturb_merges(model)
    order = [1, 0, 2]
    with torch.no_grad():
        torch.testing.assert_close(model(images, embeddings, present),
                                   model(images[:, order], embeddings[:, order], present[:, order]),
                                   atol=1e-5, rtol=1e-4)


def test_exported_segmenter_keeps_its_fusion(tmp_path):
    model = segmenter("conditioned", fusion="mean_var")
    perturb_merges(model)
    model.save_pretrained(tmp_path)
    loaded = ModalityUNETR.from_pretrained(tmp_path).eval()
    assert loaded.fusion == "mean_var"
    images, embeddings, present = random_inputs(model.net, [[1, 1, 1]])
    with torch.no_grad():
        assert torch.equal(loaded(images, embeddings, present), model(images, embeddings, present))

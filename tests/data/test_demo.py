"""Tests for the embedded SYNTHETIC demo dataset (small and coarse: 4 subjects at 4 mm)."""

from __future__ import annotations

import csv
import json
import os
import re
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from brainfm_lightning.data import demo
from brainfm_lightning.data.demo import (
    DESCRIP,
    build_demo_dataset,
    ensure_demo_dataset,
    load_tissue_maps,
    template_path,
)

SMALL = {"n_subjects": 4, "spacing": 4.0}
SHAPE_4MM = (50, 59, 48)  # 1 mm MNI grid (197, 233, 189) keeping first/last voxel centres
MODALITIES = ("T1", "T2", "PD", "FLAIR")
HEADER = ["subject", "session", "modality", "path", "lesion_volume_ml", "has_lesion", "synthetic"]


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def _sessions(manifest: Path) -> dict[str, list[dict[str, str]]]:
    sessions: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in _rows(manifest):
        sessions[f"{row['subject']}/{row['session']}"].append(row)
    return sessions


def _arrays(manifest: Path) -> dict[str, np.ndarray]:
    return {row["path"]: np.asanyarray(nib.load(manifest.parent / row["path"]).dataobj) for row in _rows(manifest)}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "ds", seed=0, **SMALL)


def test_manifest_columns_paths_and_order(manifest: Path) -> None:
    assert manifest.name == "manifest.csv"
    with open(manifest, newline="") as f:
        assert next(csv.reader(f)) == HEADER
    rows = _rows(manifest)
    for row in rows:
        assert not os.path.isabs(row["path"]) and ".." not in Path(row["path"]).parts
        assert (manifest.parent / row["path"]).is_file()
        assert row["synthetic"] == "1" and row["session"] == "ses-01"
        assert re.fullmatch(r"\d+\.\d{3}", row["lesion_volume_ml"]) and row["has_lesion"] in {"0", "1"}
    assert [(r["subject"], r["modality"]) for r in rows] == sorted((r["subject"], r["modality"]) for r in rows)
    assert sorted({r["subject"] for r in rows}) == ["sub-001", "sub-002", "sub-003", "sub-004"]
    for session_rows in _sessions(manifest).values():
        assert [r["modality"] for r in session_rows].count("seg") == 1
        assert len({(r["lesion_volume_ml"], r["has_lesion"]) for r in session_rows}) == 1  # targets repeated


def test_images_are_valid_synthetic_volumes(manifest: Path) -> None:
    for row in _rows(manifest):
        img = nib.load(manifest.parent / row["path"])
        data = np.asanyarray(img.dataobj)
        assert img.shape == SHAPE_4MM and data.ndim == 3
        assert np.allclose(img.header.get_zooms(), 4.0)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert bytes(img.header["descrip"]).rstrip(b"\0") == DESCRIP and b"SYNTHETIC" in DESCRIP
        if row["modality"] == "seg":
            assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
        else:
            assert img.get_data_dtype() == np.float32 and data.dtype == np.float32
            assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0


def test_lesion_targets_match_mask(manifest: Path) -> None:
    has_any = []
    for session, rows in _sessions(manifest).items():
        seg = nib.load(manifest.parent / session / "seg.nii.gz")
        mask = np.asanyarray(seg.dataobj)
        voxel_ml = float(np.prod(seg.header.get_zooms())) / 1000.0
        assert int(rows[0]["has_lesion"]) == int(mask.any())
        assert float(rows[0]["lesion_volume_ml"]) == pytest.approx(mask.sum() * voxel_ml, abs=5e-4)
        has_any.append(mask.any())
    assert any(has_any)  # seed 0 has lesions, so the FLAIR contrast test below is not vacuous


def test_tissue_contrasts(manifest: Path) -> None:
    csf, gm, wm = load_tissue_maps(4.0)  # undeformed template: good enough masks for a ~2 mm warp at 4 mm voxels
    checked = {"T1": 0, "FLAIR": 0}
    for session, rows in _sessions(manifest).items():
        lesion = np.asanyarray(nib.load(manifest.parent / session / "seg.nii.gz").dataobj).astype(bool)
        images = {r["modality"]: nib.load(manifest.parent / r["path"]).get_fdata() for r in rows}
        if "T1" in images:
            t1 = images["T1"]
            assert t1[(wm > 0.9) & ~lesion].mean() > t1[gm > 0.9].mean() > t1[csf > 0.9].mean()
            checked["T1"] += 1
        if "FLAIR" in images and lesion.any():
            assert images["FLAIR"][lesion].mean() > images["FLAIR"][(wm > 0.9) & ~lesion].mean()
            checked["FLAIR"] += 1
    assert checked["T1"] > 0 and checked["FLAIR"] > 0


def test_lesions_show_on_every_sequence(tmp_path: Path) -> None:
    """Hyperintense on FLAIR, T2 and PD, hypointense on T1, against white and grey matter, well above the noise."""
    manifest = build_demo_dataset(tmp_path / "ds", n_subjects=6, seed=3, spacing=4.0)
    csf, gm, wm = load_tissue_maps(4.0)
    contrast: dict[str, list[float]] = defaultdict(list)
    for session, rows in _sessions(manifest).items():
        lesion = np.asanyarray(nib.load(manifest.parent / session / "seg.nii.gz").dataobj).astype(bool)
        if lesion.sum() < 4:
            continue
        for row in rows:
            if row["modality"] == "seg":
                continue
            image = nib.load(manifest.parent / row["path"]).get_fdata()
            white, grey = image[(wm > 0.9) & ~lesion], image[(gm > 0.9) & ~lesion]
            sign = -1.0 if row["modality"] == "T1" else 1.0
            # contrast of the lesion against the closer of the two tissues, in units of the white matter's spread
            contrast[row["modality"]].append(sign * (image[lesion].mean() - (
                max if sign > 0 else min)(white.mean(), grey.mean())) / white.std())
    assert set(contrast) == set(MODALITIES)
    for modality, values in contrast.items():
        assert min(values) > 0.5, (modality, values, dict(contrast))
    assert np.mean(contrast["FLAIR"]) > np.mean(contrast["PD"])  # FLAIR stays the clearest against its neighbours


def test_heterotopia_is_grey_matter_where_white_matter_belongs(manifest: Path, tmp_path: Path) -> None:
    """Same subjects, masks and sequences as the default build; the lesion takes each image's grey-matter level."""
    nodules = build_demo_dataset(tmp_path / "het", seed=0, lesions="heterotopia", **SMALL)
    assert [(r["path"], r["lesion_volume_ml"]) for r in _rows(nodules)] == [
        (r["path"], r["lesion_volume_ml"]) for r in _rows(manifest)]
    assert json.loads((nodules.parent / "build.json").read_text())["lesions"] == "heterotopia"
    assert "lesions" not in json.loads((manifest.parent / "build.json").read_text())  # older builds stay current
    for session in _sessions(nodules):
        lesion = np.asanyarray(nib.load(nodules.parent / session / "seg.nii.gz").dataobj)
        assert np.array_equal(lesion, np.asanyarray(nib.load(manifest.parent / session / "seg.nii.gz").dataobj))
    # the rule itself: pure lesion tissue gets the image's grey-matter level, where "ms" makes it an outlier
    probs = np.zeros((4, 8, 8, 8), np.float32)
    probs[1, :4], probs[3, 4:] = 1.0, 1.0  # grey matter | lesion
    for name, contrast in demo.CONTRASTS.items():
        image = demo._synthesize(probs, contrast, np.random.default_rng(7), "heterotopia")
        grey, inside = image[:4].mean(), image[4:].mean()
        assert abs(inside - grey) < 0.02 * grey, (name, inside, grey)
        outlier = demo._synthesize(probs, contrast, np.random.default_rng(7), "ms")
        assert np.array_equal(outlier[:4], image[:4])  # the same draws: only the lesion differs
        assert abs(outlier[4:].mean() - grey) > 0.15 * grey, (name, outlier[4:].mean(), grey)
    with pytest.raises(ValueError, match="unknown lesion kind 'tumour'"):
        build_demo_dataset(tmp_path / "bad", lesions="tumour", **SMALL)


def test_modality_subsets(manifest: Path) -> None:
    subsets = [{r["modality"] for r in rows} - {"seg"} for rows in _sessions(manifest).values()]
    assert all(subsets) and all(s <= set(MODALITIES) for s in subsets)
    assert set().union(*subsets) == set(MODALITIES)
    assert any(s == set(MODALITIES) for s in subsets) and any(len(s) == 1 for s in subsets)


def test_subjects_differ(manifest: Path) -> None:
    by_modality: dict[str, list[np.ndarray]] = defaultdict(list)
    supports = {}
    for row in _rows(manifest):
        if row["modality"] != "seg":
            data = nib.load(manifest.parent / row["path"]).get_fdata()
            by_modality[row["modality"]].append(data)
            supports[row["subject"]] = (data > 0).tobytes()  # the (deformed) brain outline, modality-independent
    pairs = [(a, b) for arrays in by_modality.values() for i, a in enumerate(arrays) for b in arrays[i + 1 :]]
    assert pairs and all(not np.allclose(a, b, rtol=0.01, atol=1.0) for a, b in pairs)
    assert len(set(supports.values())) == len(supports) == 4  # anatomy differs, not only the noise


def test_same_seed_identical_other_seed_different(manifest: Path, tmp_path: Path) -> None:
    again = build_demo_dataset(tmp_path / "again", seed=0, **SMALL)
    assert _rows(again) == _rows(manifest)
    first, second = _arrays(manifest), _arrays(again)
    assert all(np.array_equal(first[p], second[p]) and first[p].dtype == second[p].dtype for p in first)
    other = build_demo_dataset(tmp_path / "other", seed=1, **SMALL)
    t1_other = nib.load(other.parent / "sub-001/ses-01/T1.nii.gz").get_fdata()  # sub-001 always has every modality
    assert not np.allclose(t1_other, first["sub-001/ses-01/T1.nii.gz"], rtol=0.01, atol=1.0)


def test_build_refuses_to_overwrite(manifest: Path) -> None:
    with pytest.raises(FileExistsError):
        build_demo_dataset(manifest.parent, seed=0, **SMALL)
    with pytest.raises(ValueError):
        build_demo_dataset(manifest.parent / "x", modalities=("T1", "DWI"), **SMALL)


def test_readme_says_synthetic(manifest: Path) -> None:
    assert (manifest.parent / "README.txt").read_text().startswith("SYNTHETIC")


def test_missing_template_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="mni_icbm152_nope_tal_nlin_sym_09a_converted"):
        template_path("nope")


def test_ensure_builds_once_concurrently_and_rebuilds_on_new_parameters(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cache" / "demo"
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_demo_dataset(out, n_subjects=2, spacing=4.0)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [out / "manifest.csv"] * 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]  # temp and stale folders cleaned up
    assert {r["subject"] for r in _rows(out / "manifest.csv")} == {"sub-001", "sub-002"}
    # Subject k does not depend on n_subjects.
    small, full = _arrays(out / "manifest.csv"), _arrays(manifest)
    assert all(np.array_equal(small[p], full[p]) for p in small)

    builds: list[Path] = []

    def counting_build(out_dir: Path, **kwargs: Any) -> Path:
        builds.append(out_dir)
        return build_demo_dataset(out_dir, **kwargs)

    monkeypatch.setattr(demo, "build_demo_dataset", counting_build)
    mtime = (out / "manifest.csv").stat().st_mtime_ns
    assert ensure_demo_dataset(out, n_subjects=2, spacing=4.0) == out / "manifest.csv"
    assert (out / "manifest.csv").stat().st_mtime_ns == mtime and not builds  # not rebuilt

    ensure_demo_dataset(out, n_subjects=3, spacing=4.0)
    assert len(builds) == 1 and (out / "manifest.csv").stat().st_mtime_ns != mtime
    assert {r["subject"] for r in _rows(out / "manifest.csv")} == {"sub-001", "sub-002", "sub-003"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]


def test_ensure_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not a demo dataset")
    with pytest.raises(FileExistsError):
        ensure_demo_dataset(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").exists()


def test_demo_datamodule_builds_the_sequences_it_is_given_and_keeps_them(tmp_path: Path) -> None:
    """``demo_modalities`` reaches the build, and preparing the data again does not rebuild it with all four."""
    from data_modules import DemoDataModule

    root = tmp_path / "pool"
    data = DemoDataModule(root=str(root), n_subjects=3, demo_spacing=4.0, demo_modalities=["T1", "FLAIR"])
    data.prepare_data()
    data.prepare_data()
    assert {r["modality"] for r in _rows(root / "manifest.csv")} == {"T1", "FLAIR", "seg"}
    assert {m for s in data.sessions for m in s.modalities} <= {"T1", "FLAIR"}
    for bad in (["T1", "DWI"], [], ["T1", "T1"]):
        with pytest.raises(ValueError, match="demo_modalities"):
            DemoDataModule(root=str(root), demo_modalities=bad)
    assert DemoDataModule(root=str(root), demo_lesions="heterotopia").build_kwargs["lesions"] == "heterotopia"
    with pytest.raises(ValueError, match="demo_lesions must be one of .* got 'tumour'"):
        DemoDataModule(root=str(root), demo_lesions="tumour")


def test_the_demo_command_builds_either_lesion_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from brainfm_lightning.cli import main

    with pytest.raises(SystemExit) as done:
        main(["data", "demo", "--help"])
    assert done.value.code == 0 and "--lesions {" + ",".join(demo.LESION_KINDS) + "}" in capsys.readouterr().out
    assert main(["data", "demo", "--out", str(tmp_path / "het"), "--subjects", "2", "--spacing", "4",
                 "--lesions", "heterotopia"]) == 0
    assert json.loads((tmp_path / "het" / "build.json").read_text())["lesions"] == "heterotopia"
    with pytest.raises(SystemExit) as bad:
        main(["data", "demo", "--out", str(tmp_path / "bad"), "--lesions", "tumour"])
    assert bad.value.code == 2 and "tumour" in capsys.readouterr().err

"""Fomo25DataModule and BidsDataModule: sessions from folder trees, clear errors, and `brainfm fit` on each.

(This folder is not named ``tests/data_modules``: a folder of that name, without ``__init__.py``, on pytest's
``pythonpath`` shadows the installed ``data_modules`` package as a namespace package under plain ``pytest``.)
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS

from brainfm_lightning.cli import main
from data_modules import BidsDataModule, Fomo25DataModule, ManifestDataModule

# subject -> modalities of its one session: 1, 2 or 3 modalities, so batches need padding (or bucketing)
FOMO_SESSIONS = {"sub_1": ["t1", "flair"], "sub_2": ["t1"], "sub_3": ["t2", "flair", "dwi_b1000"], "sub_4": ["t1"]}
BIDS_SESSIONS = {"sub-01/ses-01": ["T1w", "FLAIR"], "sub-01/ses-02": ["T1w"], "sub-02": ["T2w"], "sub-03": ["PDw"]}


def _write(path: Path, seed: int, size: int = 36) -> None:
    """A random head-like volume: a bright ball on a dark background, 2 mm voxels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = np.linalg.norm(np.indices((size,) * 3) - size / 2, axis=0)
    data = (grid < size / 3) * 100 + np.random.default_rng(seed).random((size,) * 3) * 10
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path)


@pytest.fixture(scope="module")
def fomo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fomo")
    for seed, (subject, modalities) in enumerate(FOMO_SESSIONS.items()):
        for offset, modality in enumerate(modalities):
            _write(root / subject / "ses_1" / f"{modality}.nii.gz", seed * 10 + offset)
    _write(root / "sub_1/ses_1/seg.nii.gz", 99)
    return root


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bids")
    for seed, (folder, suffixes) in enumerate(BIDS_SESSIONS.items()):
        name = folder.replace("/", "_")
        for offset, suffix in enumerate(suffixes):
            _write(root / folder / "anat" / f"{name}_{suffix}.nii.gz", seed * 10 + offset)
    return root


def test_fomo25_datamodule_serves_the_tree(fomo_root):
    data = Fomo25DataModule(str(fomo_root), crop_size=32, batch_size=4, val_fraction=0.0)
    assert isinstance(data, ManifestDataModule)
    assert {s.subject: s.modalities for s in data.sessions} == {k: sorted(v) for k, v in FOMO_SESSIONS.items()}
    assert data.sessions[0].label_path == fomo_root / "sub_1/ses_1/seg.nii.gz"
    assert data.modality_names == ["dwi_b1000", "flair", "t1", "t2"]
    (batch,) = list(data.train_dataloader())
    assert batch["images"].shape == (4, 3, 32, 32, 32)
    assert sorted(batch["present"].sum(1).tolist()) == [1, 1, 2, 3]
    assert torch.isfinite(batch["images"]).all()
    assert (batch["skipped_scans"], batch["skipped_sessions"]) == (0, 0)


def test_bucketing_in_the_datamodule_batches_equal_modality_counts(fomo_root):
    data = Fomo25DataModule(str(fomo_root), crop_size=32, batch_size=2, val_fraction=0.0,
                            bucket_by_modality_count=True)
    counts = [batch["present"].sum(1).tolist() for batch in data.train_dataloader()]
    assert [1, 1] in counts and sorted(sum(counts, [])) == [1, 1, 2, 3]


def test_bids_datamodule_serves_the_tree(bids_root):
    data = BidsDataModule(str(bids_root), crop_size=32, val_fraction=0.0)
    assert [(s.session_id, s.modalities) for s in data.sessions] == [
        ("sub-01/ses-01", ["FLAIR", "T1w"]), ("sub-01/ses-02", ["T1w"]), ("sub-02/ses-1", ["T2w"]),
        ("sub-03/ses-1", ["PDw"])]
    assert data.modality_names == ["FLAIR", "PDw", "T1w", "T2w"]


@pytest.mark.parametrize("module", [Fomo25DataModule, BidsDataModule])
def test_missing_and_empty_roots_fail_naming_the_root(module, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"dataset root not found: {tmp_path / 'nowhere'}"):
        module(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"sessions under {tmp_path / 'empty'}"):
        module(str(tmp_path / "empty"))


@pytest.mark.parametrize(("config", "root"), [("fomo25", "fomo_root"), ("bids", "bids_root")])
def test_fit_two_steps_on_a_tree(config, root, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = request.getfixturevalue(root)
    args = ["fit", "--config", str(CONFIGS / "pretrain/quickstart.yaml"), "--config", str(CONFIGS / "model/test.yaml"),
            "--config", str(CONFIGS / f"data/{config}.yaml"), "--data.root", str(tree), "--data.crop_size", "32",
            "--data.batch_size", "2", "--data.num_workers", "0", "--data.val_fraction", "0",
            "--trainer.max_steps", "2", "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main(args) == 0
    (checkpoint_path,) = sorted(tmp_path.rglob("last.ckpt"))  # wherever the logger puts it, under this folder
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    expected = FOMO_SESSIONS if config == "fomo25" else BIDS_SESSIONS
    assert sorted(checkpoint["modality_table"]["names"]) == sorted({m for v in expected.values() for m in v})
    (config_path,) = sorted(tmp_path.rglob("config.yaml"))
    saved = yaml.safe_load(config_path.read_text())["data"]
    assert saved["class_path"] == f"data_modules.{'Fomo25' if config == 'fomo25' else 'Bids'}DataModule"
    assert saved["init_args"]["root"] == str(tree)
    assert saved["init_args"]["bucket_by_modality_count"] is True

"""A batch with nothing usable never stops a rank: zero-loss steps through every parameter, joint skips under DDP."""

import csv
import subprocess
import sys
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS
from trainers import cpu_trainer

from brainfm_lightning.models import ClassificationHead, ModalityMAE, ModalityUNETR
from brainfm_lightning.modules import ClassificationModule, MAEPretrainModule, SegmentationModule, UNetBaselineModule
from data_modules import ManifestDataModule

MODULES = {
    "pretrain": lambda: MAEPretrainModule(ModalityMAE.from_preset("test")),
    "segmentation": lambda: SegmentationModule(ModalityMAE.from_preset("test"), partial(ModalityUNETR, feature_size=4),
                                               freeze_encoder="partial"),
    "classification": lambda: ClassificationModule(ModalityMAE.from_preset("test"),
                                                   partial(ClassificationHead, hidden_features=16)),
    "unet_baseline": lambda: UNetBaselineModule(img_size=32, filters=[4, 8, 16]),
}


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_an_empty_batch_is_a_zero_loss_through_every_trainable_parameter(kind):
    module = MODULES[kind]()
    loss = module.training_step(None, 0)
    assert isinstance(loss, torch.Tensor) and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for _, p in trainable)
    assert all(p.grad is None for p in module.parameters() if not p.requires_grad)


def test_a_nonfinite_loss_under_skip_is_a_counted_zero_step(demo_manifest, tmp_path, monkeypatch):
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), nonfinite_loss="skip", warmup_steps=1)
    finite = module.compute_losses
    monkeypatch.setattr(module, "compute_losses", lambda out: finite(out) | {"loss": torch.tensor(float("nan"))})
    gradients = []  # per step: did every trainable parameter get a gradient of zeros?
    monkeypatch.setattr(module, "on_after_backward", lambda: gradients.append(
        all(p.grad is not None and not p.grad.any() for p in module.parameters() if p.requires_grad)))
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=ManifestDataModule(str(demo_manifest), spacing=4.0, crop_size=32, batch_size=2,
                                                      num_workers=0))
    assert trainer.global_step == 2 and gradients == [True, True]
    assert module.skipped_batches == 2
    assert trainer.logged_metrics["train/skipped_batches"].item() == 2.0


def write_manifest_with_one_bad_session(demo_root: Path, folder: Path) -> Path:
    """Three good demo sessions and one whose every scan is constant (bad input, skipped)."""
    rows = list(csv.DictReader(open(demo_root / "manifest.csv")))
    good = sorted({(r["subject"], r["session"]) for r in rows})[:3]
    kept = [dict(subject=r["subject"], session=r["session"], modality=r["modality"], path=demo_root / r["path"])
            for r in rows if (r["subject"], r["session"]) in good]
    constant = folder / "constant.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((40, 40, 40), np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), constant)
    kept += [dict(subject="sub-bad", session="ses-01", modality=m, path=constant) for m in ("T1", "T2")]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["subject", "session", "modality", "path"])
        writer.writeheader()
        writer.writerows(kept)
    return manifest


def test_ddp_where_one_rank_gets_only_bad_scans_finishes(demo_root, tmp_path):
    """2 gloo ranks, batches of 1 session: in each epoch one step gives one rank the bad session and the other a good
    one. Before the fix that rank returned None and the other waited in the all-reduce until killed."""
    manifest = write_manifest_with_one_bad_session(demo_root, tmp_path)
    command = [str(Path(sys.executable).parent / "brainfm"), "fit",
               "--config", str(CONFIGS / "pretrain/quickstart.yaml"), "--config", str(CONFIGS / "model/test.yaml"),
               "--config", str(CONFIGS / "data/manifest.yaml"), "--data.manifest", str(manifest),
               "--data.batch_size", "1", "--data.num_workers", "0", "--data.val_fraction", "0",
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "2",
               "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    try:
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"DDP run hung (killed after {error.timeout} s):\n{(error.stderr or b'')[-3000:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2  # 2 of 4 steps trained
    (metrics,) = (tmp_path / "run").rglob("metrics.csv")
    skipped = [float(r["train/skipped_batches"]) for r in csv.DictReader(open(metrics)) if r["train/skipped_batches"]]
    assert skipped == [2.0, 2.0]  # per epoch: one step, dropped by both ranks together

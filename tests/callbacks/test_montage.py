"""ReconstructionMontage: collapse metrics against direct computations, panels against the input, PNGs on disk."""

import csv

import numpy as np
import pytest
import torch
from conftest import CONFIGS, tiny_fit_args
from PIL import Image

from brainfm_lightning.callbacks import collapse_metrics
from brainfm_lightning.callbacks.reconstruction_montage import montage_panels, render_montage
from brainfm_lightning.cli import main
from brainfm_lightning.models import ModalityMAE, unpatchify


def test_effective_rank_of_equal_and_of_one_singular_value():
    orthonormal = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0][:, :8]  # 8 equal singular values
    assert collapse_metrics(orthonormal)["feature_effective_rank"] == pytest.approx(8.0, rel=1e-6)
    collapsed = torch.randn(32, 1) * torch.randn(1, 8)  # every feature on one line
    assert collapse_metrics(collapsed)["feature_effective_rank"] == pytest.approx(1.0, abs=1e-4)


def test_feature_std_and_effective_rank_match_numpy():
    z = torch.randn(50, 6) * torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 0.0])
    metrics = collapse_metrics(z)
    array = z.double().numpy()
    assert metrics["feature_std"] == pytest.approx(array.std(axis=0, ddof=1).mean(), rel=1e-9)
    s = np.linalg.svd(array, compute_uv=False)
    p = s / s.sum()
    assert metrics["feature_effective_rank"] == pytest.approx(np.exp(-(p * np.log(p + 1e-12)).sum()), rel=1e-9)


def test_panels_show_input_hidden_patches_and_prediction():
    torch.manual_seed(0)
    net = ModalityMAE.from_preset("test")
    images = torch.randn(2, 3, 32, 32, 32)
    present = torch.tensor([[True, True, True], [True, False, False]])
    batch = {"images": images, "present": present, "modalities": [["T1", "T2", "FLAIR"], ["PD", "", ""]]}
    with torch.no_grad():
        out = net(images, torch.randn(2, 3, net.modality_dim), present, torch.Generator().manual_seed(0))
    z = 16
    names, panels = montage_panels(batch, out, net.grid, net.patch_size, session=0)
    assert names == ["T1", "T2", "FLAIR"] and panels.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(panels[:, 0], images[0, :, :, :, z].numpy())
    hidden = unpatchify(out.is_masked[:1, :, None].expand_as(out.target).float(), 3, net.grid, net.patch_size)
    hidden = hidden[0, :, :, :, z].bool().numpy()
    assert hidden.any() and (~hidden).any()
    assert np.array_equal(np.isnan(panels[:, 1]), hidden)  # the masked input is NaN exactly where hidden
    np.testing.assert_array_equal(panels[:, 1][~hidden], panels[:, 0][~hidden])
    np.testing.assert_array_equal(panels[:, 2][~hidden], panels[:, 0][~hidden])  # visible: the input
    prediction = unpatchify(out.pred[:1].detach(), 3, net.grid, net.patch_size)[0, :, :, :, z].numpy()
    np.testing.assert_allclose(panels[:, 2][hidden], prediction[hidden])  # hidden: the network's prediction
    names, panels = montage_panels(batch, out, net.grid, net.patch_size, session=1)
    assert names == ["PD"] and panels.shape == (1, 3, 32, 32)  # padded slots are not drawn


def test_render_writes_one_row_per_modality(tmp_path):
    panels = np.random.default_rng(0).normal(size=(2, 3, 32, 32))
    panels[:, 1, :16] = np.nan
    path = render_montage(["T1", "FLAIR"], panels, "sub-01/ses-01", tmp_path / "a" / "m.png")
    one_row = render_montage(["T1"], panels[:1], "sub-01/ses-01", tmp_path / "b.png")
    with Image.open(path) as two, Image.open(one_row) as one:
        assert two.format == "PNG" and two.width == one.width and two.height > 1.5 * one.height


def test_csv_logger_run_saves_montages_and_collapse_metrics(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_fit_args(demo_root, "--config", str(CONFIGS / "logger/csv.yaml"),
                         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                         "--trainer.max_steps", "4", "--trainer.max_epochs", "2",
                         "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false")
    assert main(args) == 0
    run = tmp_path / "runs" / "csv" / "version_0"
    montages = sorted(p.name for p in (run / "montages").glob("*.png"))
    assert montages == ["reconstruction-step0000002.png", "reconstruction-step0000004.png"]  # one per validation
    with open(run / "metrics.csv") as file:
        rows = [r for r in csv.DictReader(file) if r.get("val/feature_effective_rank")]
    assert len(rows) == 2
    for row in rows:
        assert 1.0 <= float(row["val/feature_effective_rank"]) <= 48  # at most the test preset's width
        assert float(row["val/feature_std"]) > 0

"""brainfm evaluate reconstruction: the MAE's masked-patch error beside a per-position template and rotated names."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import tiny_fit_args

from brainfm_lightning.cli import main
from brainfm_lightning.evaluation.reconstruction import masked_patch_errors, patch_template, rotate_names
from brainfm_lightning.models import ModalityMAE


def test_rotate_names_shifts_each_sessions_present_names():
    assert rotate_names([["FLAIR", "T1", "T2"], ["PD", "T1", ""], ["T1", "", ""]]) == [
        ["T1", "T2", "FLAIR"], ["T1", "PD", ""], ["T1", "", ""]]


def _batch(seed: int = 0) -> dict:
    images = torch.from_numpy(np.random.default_rng(seed).normal(size=(2, 2, 32, 32, 32)).astype(np.float32))
    return {"images": images, "present": torch.tensor([[True, True], [True, False]]),
            "modalities": [["T1", "FLAIR"], ["T1", ""]]}


def test_the_template_is_the_float64_mean_patch_per_name_and_position():
    net = ModalityMAE.from_preset("test")  # 32^3, 16^3 patches: 8 positions of 4096 voxels
    batch = _batch()
    template = patch_template(net, [batch, None])
    images = batch["images"].double().numpy()

    def patches(volume: np.ndarray) -> np.ndarray:  # [32]*3 -> [8, 4096], positions row-major, voxels row-major
        return volume.reshape(2, 16, 2, 16, 2, 16).transpose(0, 2, 4, 1, 3, 5).reshape(8, 4096)

    expected_t1 = (patches(images[0, 0]) + patches(images[1, 0])) / 2
    np.testing.assert_allclose(template["T1"].numpy(), expected_t1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(template["FLAIR"].numpy(), patches(images[0, 1]), rtol=1e-6, atol=1e-6)
    assert sorted(template) == ["FLAIR", "T1"]


def test_a_template_of_the_scored_session_itself_has_no_error():
    """Scores the template on exactly the patches the network reconstructs (the same order and layout)."""
    torch.manual_seed(0)
    net = ModalityMAE.from_preset("test").eval()
    batch = {key: value[:1] if key != "modalities" else value[:1] for key, value in _batch(1).items()}
    template = patch_template(net, [batch])

    def embed(names, like):
        return torch.ones(len(names), len(names[0]), net.modality_dim) * torch.tensor(
            [[float(len(n)) for n in row] for row in names])[..., None] / 10

    errors = masked_patch_errors(net, embed, [batch], template, seeds=(0, 1))
    assert errors["template"] == 0.0
    masked_per_seed = 2 * 8 - 2 * round(8 * (1 - net.mask_ratio))  # both slots, the same share kept in each
    assert errors["patches"] == 2 * masked_per_seed
    assert errors["zeros"] > 0.5 and errors["model"] > 0.0 and errors["names_rotated"] > 0.0


def test_the_command_reports_every_predictor(demo_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(tiny_fit_args(demo_root, "--trainer.max_steps", "2", "--trainer.default_root_dir", "run",
                              "--trainer.enable_progress_bar", "false")) == 0
    (checkpoint,) = (tmp_path / "run").glob("**/last.ckpt")
    capsys.readouterr()
    args = ["evaluate", "reconstruction", "--config", str(tmp_path / "run/lightning_logs/version_0/config.yaml"),
            "--ckpt_path", str(checkpoint), "--out", str(tmp_path / "out"), "--seeds", "2"]
    assert main(args) == 0
    assert "| model | template | zeros | names rotated |" in capsys.readouterr().out
    errors = json.loads((tmp_path / "out/reconstruction.json").read_text())
    assert (tmp_path / "out/reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(errors) == {"model", "template", "zeros", "names_rotated", "rotated_over_model", "patches"}
    assert all(np.isfinite(v) for v in errors.values()) and errors["template"] < errors["zeros"]
    assert main([*args[:-2], "--seeds", "0"]) == 2

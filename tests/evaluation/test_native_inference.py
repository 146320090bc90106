"""Segmenting real scans end to end: whole volumes, masks on each scan's own grid, native-space test metrics."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from brainfm_lightning.cli import main
from brainfm_lightning.data import Scan, Session, SessionDataset, SessionPreprocessor, pad_collate
from brainfm_lightning.data.sampling import ShardSampler
from brainfm_lightning.evaluation.native import native_case_metrics
from brainfm_lightning.modules.segmentation import flip_averaged_probabilities, sliding_window_logits

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def seg_args(demo_root: Path, root: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "finetune/seg_demo.yaml"), "--config", str(CONFIGS / "model/test.yaml"),
            "--data.root", str(demo_root), "--data.n_subjects", "6", "--data.demo_spacing", "4.0",
            "--data.spacing", "4.0", "--data.num_workers", "0", "--data.batch_size", "1",
            "--data.val_fraction", "0.2", "--data.test_fraction", "0.5", "--model.head.feature_size", "4",
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *extra]


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory) -> Path:
    """A segmenter fitted for 2 steps by brainfm fit (the checkpoint holds its preprocessing and table)."""
    root = tmp_path_factory.mktemp("seg_run")
    assert main(["fit", *seg_args(demo_root, root, "--trainer.max_steps", "2")]) == 0
    return root / "csv/version_0/checkpoints/last.ckpt"


def _store_as(source: Path, target: Path, orientation: str, dtype) -> None:
    """Rewrite a RAS demo scan on an LPS or LAS grid (same voxels in space) as ``dtype``."""
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32)
    flips = [0, 1] if orientation == "LPS" else [0]
    axes_flip = np.eye(4)
    for axis in flips:
        axes_flip[axis, axis], axes_flip[axis, 3] = -1.0, data.shape[axis] - 1
    stored = np.flip(data, axis=flips)
    stored = np.rint(stored * 10) if np.issubdtype(dtype, np.integer) else stored
    nib.save(nib.Nifti1Image(stored.astype(dtype), image.affine @ axes_flip), target)


def _mask_volume_ml(path: Path) -> float:
    image = nib.load(path)
    return float((np.asarray(image.dataobj) > 0.5).sum()) * float(np.prod(image.header.get_zooms()[:3])) / 1000.0


def test_test_scores_each_test_case_in_native_space(trained, demo_root, tmp_path):
    root = tmp_path / "test"
    assert main(["test", *seg_args(demo_root, root, "--ckpt_path", str(trained))]) == 0
    with (root / "csv/version_0/test_metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    cases = [r for r in rows if r["case"] not in ("mean", "std", "n_valid")]
    assert len(cases) == 3 and len({r["case"] for r in cases}) == 3  # half of the 6 subjects, each once
    for row in cases:
        subject, session = row["case"].split("/")
        mask = demo_root / subject / session / "seg.nii.gz"
        assert float(row["reference_volume_ml"]) == pytest.approx(_mask_volume_ml(mask), rel=1e-6)
        assert 0.0 <= float(row["dice"]) <= 1.0 and float(row["hd95"]) >= 0.0
        assert {"lesion_f1", "lesion_tpr", "lesion_ppv", "predicted_lesions", "predicted_volume_ml"} <= row.keys()


def test_predict_writes_masks_on_each_reference_grid_from_a_manifest_without_labels(trained, demo_root, tmp_path):
    """The composition the README gives: the training config, then the manifest datamodule and a new CSV."""
    new = tmp_path / "new"
    new.mkdir()
    _store_as(demo_root / "sub-001/ses-01/FLAIR.nii.gz", new / "flair_lps.nii.gz", "LPS", np.int16)
    _store_as(demo_root / "sub-001/ses-01/T1.nii.gz", new / "t1_las.nii.gz", "LAS", np.float32)
    _store_as(demo_root / "sub-006/ses-01/T2.nii.gz", new / "t2.nii.gz", "LAS", np.float32)
    (new / "new.csv").write_text("subject,session,modality,path\npat-1,visit-1,FLAIR,flair_lps.nii.gz\n"
                                 "pat-1,visit-1,T1,t1_las.nii.gz\npat-2,visit-1,T2w-new-name,t2.nii.gz\n")
    root = tmp_path / "run"
    args = ["predict", "--config", str(CONFIGS / "finetune/seg_demo.yaml"),
            "--config", str(CONFIGS / "data/manifest.yaml"), "--config", str(CONFIGS / "model/test.yaml"),
            "--data.manifest", str(new / "new.csv"), "--data.spacing", "4.0", "--data.num_workers", "0",
            "--model.head.feature_size", "4", "--ckpt_path", str(trained), "--trainer.default_root_dir", str(root)]
    assert main(args) == 0
    written = sorted(p.name for p in (root / "predictions").iterdir())
    assert written == ["pat-1_visit-1_seg.nii.gz", "pat-2_visit-1_seg.nii.gz"]
    for name, reference in (("pat-1_visit-1", "flair_lps.nii.gz"), ("pat-2_visit-1", "t2.nii.gz")):
        mask, scan = nib.load(root / "predictions" / f"{name}_seg.nii.gz"), nib.load(new / reference)
        assert mask.shape == scan.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, scan.affine)
        assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(scan.affine)
        assert int(mask.header["sform_code"]) == int(scan.header["sform_code"])
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_segment_from_a_checkpoint_and_from_its_export_writes_the_same_mask(trained, demo_root, tmp_path):
    flair, t1 = demo_root / "sub-005/ses-01/FLAIR.nii.gz", demo_root / "sub-005/ses-01/PD.nii.gz"
    _store_as(flair, tmp_path / "flair.nii.gz", "LPS", np.float32)
    scans = ["--scan", f"FLAIR={tmp_path / 'flair.nii.gz'}", "--scan", f"PD={t1}"]
    assert main(["segment", "--ckpt", str(trained), *scans, "--out", str(tmp_path / "a.nii.gz"), "--tta",
                 "--probabilities", str(tmp_path / "p.nii.gz")]) == 0
    assert main(["export", "--ckpt", str(trained), "--out", str(tmp_path / "exported")]) == 0
    assert main(["segment", "--ckpt", str(tmp_path / "exported"), *scans, "--out", str(tmp_path / "b.nii.gz"),
                 "--tta"]) == 0
    a, b, reference = (nib.load(p) for p in (tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "flair.nii.gz"))
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert a.shape == reference.shape and np.allclose(a.affine, reference.affine)
    probabilities = np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj)
    assert probabilities.shape == (*reference.shape, 1) and 0.0 <= probabilities.min() <= probabilities.max() <= 1.0


@pytest.mark.parametrize(("scan", "message"), [("FLAIR", "NAME=PATH"), ("FLAIR=missing.nii.gz", "missing.nii.gz")])
def test_segment_names_bad_input(trained, tmp_path, capsys, scan, message):
    assert main(["segment", "--ckpt", str(trained), "--scan", scan, "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert message in capsys.readouterr().err


def test_a_lesion_outside_the_old_centre_crop_counts(tmp_path):
    """Evaluation sees the whole volume: a lesion in a corner the 16^3 centre crop never showed is scored."""
    shape, affine = (40, 40, 40), np.diag([-1.0, -1.0, 1.0, 1.0])  # stored LPS
    image = np.zeros(shape, np.float32)
    image[2:38, 2:38, 2:38] = np.random.default_rng(0).uniform(100, 200, (36, 36, 36))
    label = np.zeros(shape, np.uint8)
    label[18:22, 18:22, 18:22] = 1  # in the centre crop
    label[3:6, 3:6, 3:6] = 1  # far outside it
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.int16), affine), tmp_path / "seg.nii.gz")
    session = Session("s", "1", [Scan("T1", tmp_path / "t1.nii.gz")], label_path=tmp_path / "seg.nii.gz")
    dataset = SessionDataset([session], SessionPreprocessor(16, spacing=1.0), with_label=True, whole_volume=True)
    batch = pad_collate([dataset[0]])
    assert batch["images"].shape[2:] == batch["label"].shape[2:] and batch["label"].sum() == 4**3 + 3**3
    perfect = batch["label"][0].numpy()
    metrics, lesions, spacing = native_case_metrics(perfect, batch["affines"][0], batch["label_paths"][0])
    assert float(metrics["dice"]) == 1.0 and lesions["reference_lesions"] == 2 and spacing == (1.0, 1.0, 1.0)
    centre_only = np.zeros_like(perfect)
    centre_only[:, 14:26, 14:26, 14:26] = perfect[:, 14:26, 14:26, 14:26]  # what a 12^3 centre crop would see
    _, missed, _ = native_case_metrics(centre_only, batch["affines"][0], batch["label_paths"][0])
    assert missed["lesion_tpr"] == 0.5 and missed["predicted_lesions"] == 1


def test_sliding_windows_equal_one_full_pass_of_a_translation_equivariant_network():
    torch.manual_seed(0)
    network = nn.Conv3d(3, 2, kernel_size=1)  # pointwise: any window sees what the full pass sees
    images = torch.randn(1, 3, 37, 29, 41)
    with torch.no_grad():
        full = network(images)
        stitched = sliding_window_logits(images, lambda x, _: network(x), (16, 16, 16), sw_batch_size=3, overlap=0.5)
    torch.testing.assert_close(stitched, full, rtol=1e-5, atol=1e-5)
    mirrored = flip_averaged_probabilities(lambda x, _: network(x), images, flip_axes=(0, 2))  # equivariant to flips
    torch.testing.assert_close(mirrored, full.softmax(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(37, 29, 41), (16, 20, 12)])
def test_each_window_is_told_where_its_centre_lies_from_the_volume_centre(shape):
    """A window's place is the window's centre minus the volume's centre: predicted here as a constant map."""
    images = torch.zeros(1, 1, *shape)

    def place(windows: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
        return places[:, :, None, None, None].expand(-1, -1, *windows.shape[2:]).clone()

    # blended constants: voxel (x, y, z) sees a weighted mean of the places of the windows covering it
    blended = sliding_window_logits(images, place, (16, 16, 16), sw_batch_size=2, overlap=0.5)
    padded = [max(n, 16) for n in shape]
    for axis, n in enumerate(padded):
        first = [0, 0, 0]
        last = [s - 1 for s in shape]
        low = float(blended[(0, axis, *first)])
        high = float(blended[(0, axis, *last)])
        assert low == pytest.approx(8 - n / 2, abs=1e-4) or n == 16  # only the first window covers voxel 0
        assert high == pytest.approx(n / 2 - 8, abs=1e-4) or n == 16  # only the last covers the last voxel
        if n == 16:  # one window along this axis: the padded volume's centre is the window's
            assert low == pytest.approx(0.0, abs=1e-5) and high == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("shape", [(37, 29, 41), (16, 20, 12), (50, 59, 48)])
@pytest.mark.parametrize(("overlap", "phase"), [(0.5, (0.0, 0.0, 0.0)), (0.25, (3.0, -5.0, 8.5)), (0.3, (0, 0, 0))])
def test_windows_on_the_lattice_lie_whole_patches_from_the_head_and_cover_the_volume(shape, overlap, phase):
    """With ``lattice``, every window's place plus the volume's phase is a whole number of patches (to half a
    voxel, where the centre falls between voxels), as the training crops on the patch lattice are; the windows
    overlap by a whole number of patches and the stitched output equals one full pass of a pointwise network."""
    torch.manual_seed(0)
    images = torch.randn(1, 2, *shape)
    network = nn.Conv3d(2, 2, kernel_size=1)
    seen = []

    def predictor(windows: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
        seen.append(places.clone())
        return network(windows)

    with torch.no_grad():
        stitched = sliding_window_logits(images, predictor, (16, 16, 16), 2, overlap, lattice=(8, 8, 8), phase=phase)
        full = network(images)
    assert stitched.shape == full.shape
    torch.testing.assert_close(stitched, full, rtol=1e-5, atol=1e-5)
    places = torch.cat(seen) + torch.tensor(phase, dtype=torch.float32)
    distance = (places / 8 - (places / 8).round()).abs() * 8  # voxels off the lattice
    assert float(distance.max()) <= 0.5
    interval = max(8, int(16 * (1 - overlap)) // 8 * 8)
    for axis in range(3):  # neighbouring windows are whole patches apart, no more than MONAI's step
        steps = places[:, axis].unique().diff()
        assert bool(((steps % 8) == 0).all() and (steps > 0).all() and (steps <= interval).all())


def test_windows_off_the_lattice_without_it():
    """MONAI's own placement (no ``lattice``) puts windows at any phase: what ``sw_on_lattice`` fixes."""
    seen = []

    def predictor(windows: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
        seen.append(places.clone())
        return torch.zeros(windows.shape[0], 2, *windows.shape[2:])

    sliding_window_logits(torch.zeros(1, 1, 37, 29, 41), predictor, (16, 16, 16), 2, 0.5)
    places = torch.cat(seen)
    assert float(((places / 8 - (places / 8).round()).abs() * 8).max()) > 0.5


def test_mirrored_passes_see_their_head_offset_negated_along_the_mirrored_axis():
    seen = []

    def logits_of(volume: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        seen.append(offset.clone())
        return torch.zeros(1, 2, *volume.shape[2:])

    flip_averaged_probabilities(logits_of, torch.zeros(1, 1, 4, 4, 4), (0, 2), torch.tensor([[1.0, 2.0, 3.0]]))
    assert [s.tolist() for s in seen] == [[[1.0, 2.0, 3.0]], [[-1.0, 2.0, 3.0]], [[1.0, 2.0, -3.0]]]


@pytest.mark.parametrize(("sessions", "ranks"), [(7, 2), (6, 3), (2, 2), (1, 2)])
def test_evaluation_visits_every_session_exactly_once_over_the_ranks(sessions, ranks):
    seen = [index for rank in range(ranks) for _, index in ShardSampler(list(range(sessions)), ranks, rank)]
    if sessions >= ranks:
        assert sorted(seen) == list(range(sessions))
    else:  # a rank left without a session repeats the last (dropped again when the table is gathered)
        assert set(seen) == set(range(sessions)) and len(seen) == ranks


@pytest.mark.skipif(shutil.which("brainfm", path=str(Path(sys.executable).parent)) is None,
                    reason="needs the brainfm console script next to the interpreter")
def test_ddp_on_two_cpu_ranks_scores_and_writes_each_case_once(trained, demo_root, tmp_path):
    brainfm = shutil.which("brainfm", path=str(Path(sys.executable).parent))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--ckpt_path", str(trained)]
    for command in ("test", "predict"):
        result = subprocess.run([brainfm, command, *seg_args(demo_root, tmp_path / command, *ddp)], env=env,
                                capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "test/csv/version_0/test_metrics.csv").open() as handle:
        cases = [r["case"] for r in csv.DictReader(handle) if r["case"] not in ("mean", "std", "n_valid")]
    assert len(cases) == len(set(cases)) == 3  # both ranks' cases, none twice
    written = sorted(p.name for p in (tmp_path / "predict/predictions").iterdir())
    assert written == [f"sub-00{k}_ses-01_seg.nii.gz" for k in range(1, 7)]


def test_segment_overlay_png_shows_the_mask_over_its_scan(trained, demo_root, tmp_path):
    flair = demo_root / "sub-001/ses-01/FLAIR.nii.gz"
    png = tmp_path / "overlay.png"
    assert main(["segment", "--ckpt", str(trained), "--scan", f"FLAIR={flair}", "--out", str(tmp_path / "m.nii.gz"),
                 "--overlay", str(png)]) == 0
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    reddish = (pixels[..., 0] > 150) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)
    predicted = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj).any()
    assert pixels.shape[1] > 600 and (reddish.sum() > 0) == bool(predicted)


def test_native_metrics_clear_small_predicted_lesions_on_the_masks_own_grid(tmp_path):
    """A speck below --min-lesion-ml is a false lesion without post-processing and gone with it (int16 LPS mask,
    anisotropic voxels: the volume is taken on the mask's grid)."""
    affine = np.diag([-1.0, -1.0, 2.5, 1.0])  # stored LPS, 1 x 1 x 2.5 mm
    label = np.zeros((20, 20, 12), np.int16)
    label[8:12, 8:12, 4:8] = 1  # 64 voxels: 0.16 ml
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "seg.nii.gz")
    prediction = label.astype(np.uint8)
    prediction[1:3, 1:3, 1] = 1  # a false lesion of 4 voxels: 0.01 ml
    raw, raw_lesions, _ = native_case_metrics(prediction[None], affine, tmp_path / "seg.nii.gz")
    assert raw_lesions["predicted_lesions"] == 2 and float(raw["dice"]) < 1.0
    cleared, lesions, spacing = native_case_metrics(prediction[None], affine, tmp_path / "seg.nii.gz",
                                                    min_lesion_ml=0.02)
    assert spacing == (1.0, 1.0, 2.5) and lesions["predicted_lesions"] == 1 and float(cleared["dice"]) == 1.0
    _, too_strict, _ = native_case_metrics(prediction[None], affine, tmp_path / "seg.nii.gz", min_lesion_ml=0.2)
    assert too_strict["predicted_lesions"] == 0 and too_strict["lesion_f1"] == 0.0


def test_segment_min_lesion_ml_clears_small_lesions_from_the_written_mask(trained, demo_root, tmp_path):
    flair = demo_root / "sub-005/ses-01/FLAIR.nii.gz"
    _store_as(flair, tmp_path / "flair.nii.gz", "LPS", np.int16)
    scan = ["--scan", f"FLAIR={tmp_path / 'flair.nii.gz'}"]
    assert main(["segment", "--ckpt", str(trained), *scan, "--out", str(tmp_path / "all.nii.gz")]) == 0
    everything = np.asarray(nib.load(tmp_path / "all.nii.gz").dataobj)
    components, n = ndimage.label(everything > 0, structure=np.ones((3, 3, 3)))
    assert n >= 1, "the 2-step segmenter predicts some foreground to clear"
    voxel_ml = float(np.prod(nib.load(tmp_path / "flair.nii.gz").header.get_zooms()[:3])) / 1000.0
    volumes = np.bincount(components.ravel())[1:] * voxel_ml
    threshold = float(np.median(volumes)) + 1e-6
    assert main(["segment", "--ckpt", str(trained), *scan, "--out", str(tmp_path / "big.nii.gz"),
                 "--min-lesion-ml", str(threshold)]) == 0
    kept = np.asarray(nib.load(tmp_path / "big.nii.gz").dataobj)
    expected = np.where(np.isin(components, 1 + np.flatnonzero(volumes >= threshold)), everything, 0)
    np.testing.assert_array_equal(kept, expected)
    assert main(["segment", "--ckpt", str(trained), *scan, "--out", str(tmp_path / "x.nii.gz"),
                 "--min-lesion-ml", "-1"]) == 2


def test_with_a_checkpoint_the_command_line_model_options_win_and_the_rest_comes_from_it(
    trained, demo_root, tmp_path, monkeypatch
):
    """LightningCLI applies a checkpoint's hyperparameters over everything; ours keep explicit ``--model.*``."""
    import functools

    import lightning as L

    tested = []

    @functools.wraps(L.Trainer.test)  # LightningCLI reads the subcommand's options from this signature
    def keep_the_model(self, model=None, *args, **kwargs):
        tested.append(model)

    monkeypatch.setattr(L.Trainer, "test", keep_the_model)
    args = seg_args(demo_root, tmp_path, "--ckpt_path", str(trained), "--model.sw_overlap", "0.6",
                    "--model.init_args.min_lr_ratio=0.1")
    at = args.index("--model.head.feature_size")
    del args[at : at + 2]  # the fit's command-line decoder width (4, not the config's) must come from the checkpoint
    assert main(["test", *args]) == 0
    model = tested[0]
    assert model.hparams.sw_overlap == 0.6 and model.hparams.min_lr_ratio == 0.1
    assert model.segmenter.feature_size == 4

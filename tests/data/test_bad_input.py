"""Bad input: every defect is a ScanError naming the file, and ``brainfm data check`` lists each one."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainfm_lightning.cli import main
from brainfm_lightning.data.io import ScanError, load_scan
from brainfm_lightning.data.manifest import ManifestError, Problem, read_manifest

SHAPE = (16, 16, 16)
MAX_VOXELS = 30**3  # huge.nii.gz (40^3) is over it, the 16^3 scans are not


def _save(path: Path, data: np.ndarray | None = None, spacing: tuple[float, ...] = (2.0, 2.0, 2.0)) -> Path:
    if data is None:
        data = np.random.default_rng(len(path.name)).random(SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([*spacing, 1.0])), path)
    return path


def _truncated(path: Path) -> Path:
    payload = _save(path).read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    return path


def _random(*shape: int) -> np.ndarray:
    return np.random.default_rng(1).random(shape)


def _with_nan(path: Path) -> Path:
    data = _random(*SHAPE)
    data[3, 4, 5] = np.nan
    return _save(path, data)


# file name -> (writer, fragment of the reason); each writes one defective scan
DEFECTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated.nii.gz": (_truncated, "unreadable or truncated"),
    "garbage.nii.gz": (lambda p: (p.write_bytes(b"not a nifti"), p)[1], "unreadable or truncated"),
    "nan.nii.gz": (_with_nan, "1 non-finite (NaN/Inf) voxels"),
    "inf.nii.gz": (lambda p: _save(p, np.full(SHAPE, np.inf)), "4096 non-finite"),
    "constant.nii.gz": (lambda p: _save(p, np.full(SHAPE, 7.0)), "constant volume (every voxel is 7.0)"),
    "four_d.nii.gz": (lambda p: _save(p, _random(*SHAPE, 3)), "4D image of shape (16, 16, 16, 3) holds 3 volumes"),
    "flat.nii.gz": (lambda p: _save(p, _random(16, 16)), "2D image of shape (16, 16)"),
    "scan.mgz": (lambda p: (p.write_bytes(b"mgh"), p)[1], "unsupported extension"),
    "anisotropic.nii.gz": (lambda p: _save(p, spacing=(1.0, 1.0, 10.0)), "(1.0, 1.0, 10.0) mm is more anisotropic"),
    "huge.nii.gz": (lambda p: _save(p, _random(40, 40, 40)), f"exceeds the limit of {MAX_VOXELS} voxels"),
    "missing.nii.gz": (lambda p: p, "file not found"),
}


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_load_scan_rejects_each_defect_naming_the_file(name, tmp_path):
    write, reason = DEFECTS[name]
    path = write(tmp_path / name)
    with pytest.raises(ScanError) as error:
        load_scan(path, max_voxels=MAX_VOXELS)
    assert error.value.path == path
    assert str(error.value).startswith(f"{path}: ")
    assert reason in error.value.reason
    assert "\n" not in str(error.value)


def test_single_volume_4d_is_its_first_volume_and_labels_may_be_constant(tmp_path):
    volume = _random(*SHAPE).astype(np.float32)
    data, affine = load_scan(_save(tmp_path / "one.nii.gz", volume[..., None]))
    np.testing.assert_array_equal(data, volume)
    np.testing.assert_array_equal(np.diag(affine), [2.0, 2.0, 2.0, 1.0])
    mask, _ = load_scan(_save(tmp_path / "empty_mask.nii.gz", np.zeros(SHAPE)), allow_constant=True)
    assert mask.shape == SHAPE and not mask.any()


def _write_manifest(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "session", "modality", "path"])
        writer.writerows(rows)
    return path


@pytest.fixture
def planted(tmp_path) -> tuple[Path, dict[str, str]]:
    """A manifest with one session per defect (next to a good T1), a duplicate modality and a label-only session.

    Returns the manifest and ``{file name: reason fragment}`` of every planted problem.
    """
    rows, expected = [], {}
    for number, (name, (write, reason)) in enumerate(sorted(DEFECTS.items())):
        write(tmp_path / name)
        _save(tmp_path / f"good{number}.nii.gz")
        rows += [(f"s{number}", "v1", "T1", f"good{number}.nii.gz"), (f"s{number}", "v1", "T2", name)]
        expected[name] = reason
    _save(tmp_path / "again.nii.gz")
    rows.append(("s0", "v1", "T1", "again.nii.gz"))
    expected["again.nii.gz"] = "modality 'T1' appears twice in session s0/v1"
    _save(tmp_path / "seg.nii.gz", np.zeros(SHAPE))
    rows.append(("lonely", "v1", "seg", "seg.nii.gz"))
    expected["manifest.csv"] = "empty session lonely/v1"
    return _write_manifest(tmp_path / "manifest.csv", rows), expected


def test_check_lists_every_planted_problem_with_its_file(planted, capsys):
    manifest, expected = planted
    assert main(["data", "check", str(manifest), "--max-voxels", str(MAX_VOXELS)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    problems, summary = lines[:-1], lines[-1]
    assert len(problems) == len(expected)
    for name, reason in expected.items():
        matching = [line for line in problems if line.startswith(f"{manifest.parent / name}: ")]
        assert len(matching) == 1, (name, problems)
        assert reason in matching[0]
    sessions = len(DEFECTS)  # the label-only session is not counted
    assert summary == (f"checked {sessions} sessions, {2 * sessions} scans and 0 label masks (manifest layout): "
                       f"{len(expected)} problem(s)")


def test_check_with_workers_prints_the_same(planted, capsys):
    manifest, _ = planted
    main(["data", "check", str(manifest), "--max-voxels", str(MAX_VOXELS)])
    serial = capsys.readouterr().out
    assert main(["data", "check", str(manifest), "--max-voxels", str(MAX_VOXELS), "--workers", "2"]) == 1
    assert capsys.readouterr().out == serial


def test_check_passes_a_clean_manifest(tmp_path, capsys):
    rows = [("a", "v1", "T1", str(_save(tmp_path / "t1.nii.gz"))), ("a", "v1", "FLAIR", "flair.nii.gz")]
    _save(tmp_path / "flair.nii.gz")
    rows.append(("a", "v1", "label", str(_save(tmp_path / "lesions.nii.gz", np.zeros(SHAPE)))))
    assert main(["data", "check", str(_write_manifest(tmp_path / "clean.csv", rows))]) == 0
    out = capsys.readouterr().out
    assert out == "checked 1 sessions, 2 scans and 1 label masks (manifest layout): 0 problem(s)\n"


def test_check_reports_a_bad_label_mask_and_a_broken_header(tmp_path, capsys):
    rows = [("a", "v1", "T1", str(_save(tmp_path / "t1.nii.gz"))), ("a", "v1", "seg", "mask.nii.gz")]
    _truncated(tmp_path / "mask.nii.gz")
    assert main(["data", "check", str(_write_manifest(tmp_path / "m.csv", rows))]) == 1
    assert f"{tmp_path / 'mask.nii.gz'}: label mask: unreadable or truncated" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("subject,path\na,t1.nii.gz\n")
    assert main(["data", "check", str(tmp_path / "bad.csv")]) == 1
    assert f"{tmp_path / 'bad.csv'}: missing column(s) ['session', 'modality']" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["nowhere.csv"], ["nowhere", "--layout", "bids"]])
def test_check_of_a_missing_path_is_an_error_naming_it(argv, tmp_path, capsys):
    argv[0] = str(tmp_path / argv[0])
    assert main(["data", "check", *argv]) == 2
    assert f"not found: {argv[0]}" in capsys.readouterr().err


def test_check_of_a_folder_of_unknown_layout_is_an_error(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "cannot tell the layout" in capsys.readouterr().err


def test_read_manifest_raises_by_default_and_reports_when_asked(tmp_path):
    rows = [("a", "v1", "T1", "x.nii.gz"), ("a", "v1", "T1", "y.nii.gz"), ("b", "v1", "", "z.nii.gz"),
            ("c", "v1", "seg", "m.nii.gz")]
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError, match=r"m.csv:3: modality 'T1' appears twice in session a/v1"):
        read_manifest(manifest)
    problems: list[Problem] = []
    sessions = read_manifest(manifest, problems)
    assert [(s.session_id, s.modalities, s.scans[0].path.name) for s in sessions] == [("a/v1", ["T1"], "x.nii.gz")]
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'y.nii.gz'}: modality 'T1' appears twice in session a/v1 (m.csv line 3, row ignored)",
        f"{manifest}: empty field(s) ['modality'] (m.csv line 4, row ignored)",
        f"{manifest}: empty session c/v1: no image row (only a label mask or bad rows)",
    ]


def test_scan_error_survives_pickling_between_processes():
    import pickle

    from brainfm_lightning.data import ScanError

    error = pickle.loads(pickle.dumps(ScanError("/data/sub-1/t1.nii.gz", "constant volume")))
    assert str(error) == "/data/sub-1/t1.nii.gz: constant volume" and error.reason == "constant volume"


def test_check_runs_the_preprocessing_training_runs(tmp_path, capsys, monkeypatch):
    """What check passes, training reads: each session also goes through SessionPreprocessor.to_grid."""
    from brainfm_lightning.data.preprocess import SessionPreprocessor

    rows = [("a", "v1", "T1", str(_save(tmp_path / "t1.nii.gz"))), ("b", "v1", "T1", str(_save(tmp_path / "b.nii.gz")))]
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    seen: list[tuple[str, ...]] = []
    real = SessionPreprocessor.to_grid

    def to_grid(self, volumes, label=None):
        seen.append((tuple(volumes), self.spacing))
        if len(seen) == 2:
            raise RuntimeError("cannot resample")
        return real(self, volumes, label)

    monkeypatch.setattr(SessionPreprocessor, "to_grid", to_grid)
    assert main(["data", "check", str(manifest), "--spacing", "3.0"]) == 1
    assert seen == [(("T1",), 3.0), (("T1",), 3.0)]
    out = capsys.readouterr().out
    assert f"{tmp_path / 'b.nii.gz'}: preprocessing of b/v1 failed (RuntimeError: cannot resample)" in out

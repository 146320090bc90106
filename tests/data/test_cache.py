"""The prepared cache: same samples as the NIfTI path, keyed by settings, resumable, and bad scans named."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brainfm_lightning.cli import main
from brainfm_lightning.data import Scan, ScanError, Session, SessionDataset, SessionPreprocessor, read_manifest
from brainfm_lightning.data import dataset as dataset_module
from brainfm_lightning.data import prepare as prepare_module
from brainfm_lightning.data.cache import TEMP_MARK, PreparedCache
from brainfm_lightning.data.prepare import prepare_cache

FLOAT16_TOLERANCE = dict(rtol=2e-3, atol=2e-3)  # z-scores of a few units, stored with 11 significant bits


@pytest.fixture(scope="module")
def sessions(demo_manifest) -> list[Session]:
    return read_manifest(demo_manifest)[:3]


def _files(cache: PreparedCache, session: Session) -> list[Path]:
    meta = cache.meta_path(session)
    return sorted(meta.parent.glob(meta.name.removesuffix(".json") + ".*"))


@pytest.fixture(scope="module")
def prepared(sessions, tmp_path_factory) -> PreparedCache:
    cache = PreparedCache(tmp_path_factory.mktemp("cache"), spacing=6.0)
    report = prepare_cache(sessions, cache)
    assert (report.prepared, report.reused, report.problems) == (len(sessions), 0, [])
    return cache


# (48, 32, 64) is larger than the demo volumes at 6 mm (about 33 x 39 x 32): the padding is compared too
@pytest.mark.parametrize("crop", [32, (48, 32, 64)])
def test_cached_samples_equal_the_nifti_samples(sessions, prepared, crop, monkeypatch):
    preprocessor = SessionPreprocessor(crop, spacing=6.0, random_crop=True, flip_probability=0.5)
    uncached = SessionDataset(sessions, preprocessor, with_label=True, seed=7)
    cached = SessionDataset(sessions, preprocessor, with_label=True, seed=7, cache=prepared)
    keys = [(0, 0), (1, 0), (2, 0), (0, 1), (5, 2)]
    expected = {key: uncached[key] for key in keys}
    monkeypatch.setattr(dataset_module, "load_scan", None)  # the cached path must not open a NIfTI file
    for key in keys:
        sample, reference = cached[key], expected[key]
        assert sample["images"].dtype == torch.float32 and sample["images"].shape == reference["images"].shape
        torch.testing.assert_close(sample["images"], reference["images"], **FLOAT16_TOLERANCE)
        assert torch.equal(sample["label"], reference["label"]) and sample["label"].dtype == torch.uint8
        assert sample["modalities"] == reference["modalities"] and sample["session_id"] == reference["session_id"]
    epochs = [cached[key]["images"] for key in keys[:3]]
    assert not all(torch.equal(epochs[0], other) for other in epochs[1:])  # real random draws were compared


def test_a_settings_change_uses_a_new_folder_and_never_the_old_arrays(sessions, tmp_path, caplog):
    old = PreparedCache(tmp_path, spacing=None)
    prepare_cache(sessions[:1], old)
    changed = [PreparedCache(tmp_path, spacing=6.0), PreparedCache(tmp_path, max_voxels=10**6),
               PreparedCache(tmp_path, max_anisotropy=4.0), PreparedCache(tmp_path, dtype="float32")]
    assert len({old.folder, *(c.folder for c in changed)}) == 5
    assert all(c.folder.parent == tmp_path and c.read(sessions[0]) is None for c in changed)
    assert PreparedCache(tmp_path, spacing=None).folder == old.folder  # same settings, same folder
    assert json.loads((old.folder / "settings.json").read_text())["spacing"] is None
    preprocessor = SessionPreprocessor(32, spacing=6.0)
    with caplog.at_level(logging.WARNING, logger="brainfm_lightning.data.dataset"):
        sample = SessionDataset(sessions[:1], preprocessor, cache=changed[0])[0]
    reference = SessionDataset(sessions[:1], preprocessor)[0]
    assert torch.equal(sample["images"], reference["images"])  # fell back to the NIfTI files, exactly
    assert "not in the prepared cache" in caplog.text


def test_a_changed_scan_is_prepared_again(tmp_path, write_nifti):
    scan = write_nifti(tmp_path / "t1.nii.gz", seed=0)
    session = Session("a", "v1", [Scan("T1", scan)])
    cache = PreparedCache(tmp_path / "cache")
    prepare_cache([session], cache)
    assert cache.is_prepared(session)
    write_nifti(scan, seed=1)
    os.utime(scan, ns=(time.time_ns(), time.time_ns() + 10**9))  # a newer mtime even on coarse clocks
    next_run = PreparedCache(tmp_path / "cache")
    assert not next_run.is_prepared(session)
    assert prepare_cache([session], next_run).prepared == 1


def test_an_interrupted_prepare_resumes_with_only_the_missing_session(sessions, tmp_path, monkeypatch):
    cache = PreparedCache(tmp_path, spacing=6.0)
    prepare_cache(sessions, cache)
    lost, kept = sessions[1], [sessions[0], sessions[2]]
    for path in _files(cache, lost):
        path.unlink()
    half_written = cache.meta_path(kept[0]).parent / f"{cache.meta_path(lost).name}{TEMP_MARK}123-abcdef01"
    half_written.write_bytes(b"half a file")
    os.utime(half_written, (time.time() - 3600, time.time() - 3600))  # left by a run an hour ago
    stamps = {path: path.stat().st_mtime_ns for session in kept for path in _files(cache, session)}
    assert not cache.is_prepared(lost) and all(cache.is_prepared(s) for s in kept)
    redone = []
    original = prepare_module.prepare_session
    monkeypatch.setattr(prepare_module, "prepare_session", lambda s, *a: redone.append(s.session_id) or original(s, *a))
    report = prepare_cache(sessions, cache)
    assert redone == [lost.session_id]
    assert (report.prepared, report.reused, report.removed_temp_files) == (1, 2, 1)
    assert not half_written.exists() and cache.is_prepared(lost)
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # finished sessions untouched
    assert prepare_cache(sessions, cache).prepared == 0


def test_a_bad_scan_is_reported_by_name_and_skipped_or_stops(tmp_path, write_nifti, caplog):
    good = write_nifti(tmp_path / "t1.nii.gz")
    bad = write_nifti(tmp_path / "flair.nii.gz", data=np.full((16, 16, 16), 3.0, np.float32))
    session = Session("a", "v1", [Scan("T1", good), Scan("FLAIR", bad)])
    cache = PreparedCache(tmp_path / "cache")
    with pytest.raises(ScanError) as error:
        prepare_cache([session], cache, policy="error")
    assert error.value.path == bad and not cache.is_prepared(session)
    found = []
    report = prepare_cache([session], cache, on_problem=found.append)
    assert [p.path for p in found] == [bad] and "constant volume" in found[0].reason and report.prepared == 1
    dataset = SessionDataset([session], SessionPreprocessor(16), cache=cache)
    with caplog.at_level(logging.WARNING, logger="brainfm_lightning.data.dataset"):
        sample = dataset[0]
    assert sample["modalities"] == ["T1"] and sample["skipped_scans"] == 1 and dataset.skipped_scans == 1
    assert str(bad) in caplog.text
    with pytest.raises(ScanError, match="constant volume") as error:  # policy "error" at training time
        SessionDataset([session], SessionPreprocessor(16), policy="error", cache=cache)[0]
    assert error.value.path == bad


def test_cli_help_and_a_bad_config_path(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["data", "prepare", "--help"])
    assert done.value.code == 0 and "--cache-root" in capsys.readouterr().out
    missing = tmp_path / "nope.yaml"
    assert main(["data", "prepare", "--config", str(missing)]) == 2
    assert f"config not found: {missing}" in capsys.readouterr().err


def test_cli_prepares_what_the_training_config_reads(capsys, tmp_path, write_nifti):
    rows = ["subject,session,modality,path"]
    for subject in ("s1", "s2"):
        rows += [f"{subject},v1,T1,{write_nifti(tmp_path / subject / 't1.nii.gz', seed=len(rows))}",
                 f"{subject},v1,T2,{write_nifti(tmp_path / subject / 't2.nii.gz', seed=len(rows) + 1)}"]
    bad = write_nifti(tmp_path / "s2" / "flair.nii.gz", data=np.zeros((16, 16, 16), np.float32))
    rows.append(f"s2,v1,FLAIR,{bad}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "train.yaml"
    config.write_text("trainer:\n  max_steps: 1\ndata:\n  class_path: data_modules.ManifestDataModule\n"
                      f"  init_args:\n    manifest: {tmp_path / 'nope.csv'}\n    crop_size: 16\n    spacing: 3.0\n")
    cache_root = tmp_path / "cache"
    argv = ["data", "prepare", "--config", str(config), "--set", f"manifest={tmp_path / 'manifest.csv'}",
            "--set", f"data.cache_dir={cache_root}", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{bad}: constant volume" in out and "2 prepared" in out
    from data_modules import ManifestDataModule

    datamodule = ManifestDataModule(str(tmp_path / "manifest.csv"), crop_size=16, spacing=3.0,
                                    cache_dir=str(cache_root))
    dataset = datamodule._dataset(datamodule.sessions, train=True)
    assert dataset.cache is not None and all(dataset.cache.is_prepared(s) for s in datamodule.sessions)
    assert main(argv) == 0 and "0 prepared, 2 already prepared" in capsys.readouterr().out


def test_parallel_workers_report_and_stop_like_one(tmp_path, write_nifti):
    sessions = [Session(f"s{i}", "v1", [Scan("T1", write_nifti(tmp_path / f"s{i}.nii.gz", seed=i))]) for i in range(3)]
    bad = write_nifti(tmp_path / "flat.nii.gz", data=np.ones((16, 16, 16), np.float32))
    sessions[1].scans.append(Scan("T2", bad))
    with pytest.raises(ScanError) as error:  # raised in a worker process, re-raised here naming the file
        prepare_cache(sessions, PreparedCache(tmp_path / "stop"), policy="error", workers=2)
    assert error.value.path == bad
    report = prepare_cache(sessions, PreparedCache(tmp_path / "skip"), workers=2)
    assert report.prepared == 3 and [p.path for p in report.problems] == [bad]

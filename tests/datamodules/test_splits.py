"""Train, validation and test subjects: seeded, disjoint, and a test split that checkpoint selection never sees."""

from __future__ import annotations

import pytest

from data_modules import ManifestDataModule


def subjects(sessions) -> set[str]:
    return {s.subject for s in sessions}


def test_test_fraction_holds_out_subjects_apart_from_validation(demo_manifest):
    splits = ManifestDataModule(str(demo_manifest), spacing=4.0,
                                val_fraction=0.2, test_fraction=0.3).splits  # 6 subjects
    train, val, test = (subjects(splits[name]) for name in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (2, 2, 2)  # ceil(0.2 * 6) = 2, ceil(0.3 * 6) = 2
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == subjects(ManifestDataModule(str(demo_manifest)).sessions)


def test_adding_a_test_split_keeps_the_validation_subjects(demo_manifest):
    without = ManifestDataModule(str(demo_manifest), spacing=4.0, val_fraction=0.2, seed=3).splits
    with_test = ManifestDataModule(str(demo_manifest), spacing=4.0, val_fraction=0.2, test_fraction=0.2, seed=3).splits
    assert subjects(with_test["val"]) == subjects(without["val"])
    assert without["test"] == without["val"]  # test_fraction 0: the test stage reuses the validation subjects


def test_splits_are_seeded(demo_manifest):
    def split(seed):
        data = ManifestDataModule(str(demo_manifest), spacing=4.0, val_fraction=0.2, test_fraction=0.2, seed=seed)
        return subjects(data.splits["val"]), subjects(data.splits["test"])

    assert split(1) == split(1)
    assert any(split(seed) != split(1) for seed in range(2, 8))


@pytest.mark.parametrize("val, test", [(0.5, 0.5), (0.2, -0.1), (0.0, 1.0)])
def test_fractions_that_leave_no_training_subject_are_refused(demo_manifest, val, test):
    with pytest.raises(ValueError, match="test_fraction"):
        ManifestDataModule(str(demo_manifest), spacing=4.0, val_fraction=val, test_fraction=test)


def test_a_split_column_chooses_the_test_sessions(demo_manifest, tmp_path):
    """Rows with split=test are what brainfm test evaluates, whatever the fractions say."""
    lines = demo_manifest.read_text().splitlines()
    header = lines[0].split(",")
    assigned = {"sub-001": "test", "sub-002": "val", "sub-003": "test"}
    rows = [header + ["split"]]
    for line in lines[1:]:
        cells = line.split(",")
        rows.append(cells[:3] + [str(demo_manifest.parent / cells[3])] + cells[4:] +
                    [assigned.get(cells[0], "train")])
    manifest = tmp_path / "with_split.csv"
    manifest.write_text("\n".join(",".join(r) for r in rows) + "\n")
    data = ManifestDataModule(str(manifest), spacing=4.0, val_fraction=0.5, test_fraction=0.3)
    assert subjects(data.splits["test"]) == {"sub-001", "sub-003"}
    assert subjects(data.splits["val"]) == {"sub-002"}
    assert len(data.test_dataloader().sampler) == 2  # each test session once

"""brainfm evaluate robustness: a checkpoint of one training step, scored on every modality subset of the test split."""

import csv

import pytest
from conftest import CONFIGS

from brainfm_lightning.cli import main
from brainfm_lightning.commands.evaluate import parse_renames
from data_modules import DemoDataModule

TEST_PRESET = [CONFIGS / "finetune/seg_demo.yaml", CONFIGS / "model/test.yaml"]
TINY_DATA = {"data.n_subjects": "6", "data.demo_spacing": "4.0", "data.spacing": "4.0", "data.num_workers": "0"}


def configs(*paths) -> list[str]:
    return [item for path in paths for item in ("--config", str(path))]


def overrides(demo_root, **values: str) -> dict[str, str]:
    """The tiny demo data (6 subjects at 4 mm) and a 4-channel decoder, plus ``values``."""
    return {"data.root": str(demo_root), **TINY_DATA, "model.head.feature_size": "4", **values}


def as_set(values: dict[str, str]) -> list[str]:
    return [item for key, value in values.items() for item in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def seg_checkpoint(demo_root, tmp_path_factory):
    """A SegmentationModule (test preset, 32^3) after one training step through ``brainfm fit``."""
    run = tmp_path_factory.mktemp("seg_run")
    settings = overrides(demo_root, **{"trainer.max_steps": "1", "trainer.max_epochs": "1",
                                       "trainer.limit_val_batches": "1", "trainer.enable_progress_bar": "false",
                                       "trainer.default_root_dir": str(run),
                                       "trainer.logger.init_args.save_dir": str(run)})
    assert main(["fit", *configs(*TEST_PRESET), *(item for k, v in settings.items() for item in (f"--{k}", v))]) == 0
    return next(run.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def test_modalities(demo_root) -> list[str]:
    """The modalities of the single held-out (test) session of the tiny demo data."""
    module = DemoDataModule(root=str(demo_root), n_subjects=6, demo_spacing=4.0, crop_size=32, val_fraction=0.15,
                            test_fraction=0.15)  # as configs/finetune/seg_demo.yaml
    (session,) = module.splits["test"]
    return sorted(session.modalities)


def evaluate(checkpoint, demo_root, out, *extra: str) -> int:
    return main(["evaluate", "robustness", *configs(*TEST_PRESET), "--ckpt_path", str(checkpoint), "--out", str(out),
                 *as_set(overrides(demo_root)), *extra])


def test_every_modality_subset_gets_a_row_and_the_unseen_name_replaces_the_old_one(
    seg_checkpoint, demo_root, test_modalities, tmp_path, capsys
):
    renamed = test_modalities[0]
    assert evaluate(seg_checkpoint, demo_root, tmp_path, "--unseen-name", f"{renamed}=T2-FLAIR-3D-SPACE") == 0
    rows = list(csv.DictReader((tmp_path / "robustness.csv").open()))
    names = [*test_modalities[1:], "T2-FLAIR-3D-SPACE"]
    assert len(rows) == 2 ** len(test_modalities) - 1
    assert {r["subset"] for r in rows} == {"+".join(sorted(s)) for s in _subsets(names)}
    assert any(r["subset"] == "T2-FLAIR-3D-SPACE" for r in rows)  # the unseen name alone
    assert all(0.0 <= float(r["dice"]) <= 1.0 and r["n_cases"] == "1" for r in rows)
    table = (tmp_path / "robustness.md").read_text()
    assert table.startswith("| subset | n_modalities | n_cases | dice | hd95 |") and "T2-FLAIR-3D-SPACE" in table
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in capsys.readouterr().out


def _subsets(names: list[str]) -> list[list[str]]:
    return [[n for i, n in enumerate(names) if mask >> i & 1] for mask in range(1, 2 ** len(names))]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": "nowhere.yaml"}, "config not found: nowhere.yaml"),
        ({"ckpt": "missing.ckpt"}, "checkpoint not found: missing.ckpt"),
        ({"extra": ["--unseen-name", "DWI=DWI-b1000"]}, "modality 'DWI' is not in the data"),
        ({"extra": ["--unseen-name", "FLAIR=T1"]}, "'T1' is already a modality of the data"),
        ({"extra": ["--unseen-name", "FLAIR"]}, "--unseen-name wants OLD=NEW, got 'FLAIR'"),
        ({"extra": ["--limit", "0"]}, "--limit must be >= 1, got 0"),
        ({"extra": ["--min-lesion-ml", "-0.5"]}, "--min-lesion-ml must be >= 0, got -0.5"),
        ({"extra": ["--set", "model.head.feature_size=8"]}, "does not fit the model of the configs"),
    ],
)
def test_bad_inputs_exit_2_naming_the_value(change, message, seg_checkpoint, demo_root, tmp_path, capsys):
    checkpoint = change.get("ckpt", seg_checkpoint)
    args = ["evaluate", "robustness", *configs(change.get("config", TEST_PRESET[0]), TEST_PRESET[1]),
            "--ckpt_path", str(checkpoint), "--out", str(tmp_path), *as_set(overrides(demo_root))]
    args += change.get("extra", [])
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "robustness.csv").exists()


def test_a_checkpoint_of_another_model_class_is_refused(seg_checkpoint, demo_root, tmp_path, capsys):
    values = {"data.root": str(demo_root), **TINY_DATA, "data.crop_size": "32", "model.img_size": "32"}
    args = ["evaluate", "robustness", *configs(CONFIGS / "finetune/unet_baseline.yaml"),
            "--ckpt_path", str(seg_checkpoint), *as_set(values)]
    assert main(args) == 2
    assert "holds a brainfm_lightning.modules.SegmentationModule" in capsys.readouterr().err


def test_renames_parse_and_reject_repeats():
    assert parse_renames(["FLAIR=T2-FLAIR 3D", " T1 = MPRAGE "]) == {"FLAIR": "T2-FLAIR 3D", "T1": "MPRAGE"}
    with pytest.raises(ValueError, match="renames 'T1' twice"):
        parse_renames(["T1=a", "T1=b"])


@pytest.mark.parametrize("argv", [["evaluate", "--help"], ["evaluate", "robustness", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "robustness" in capsys.readouterr().out

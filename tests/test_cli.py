"""The brainfm command: LightningCLI runs in a temp folder, configs compose, bad values fail at once."""

import pytest
import torch
from conftest import CONFIGS, tiny_fit_args

from brainfm_lightning.cli import main


def test_overview_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "fit" in out and "data" in out and "modalities" in out


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_lightning_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_fit_fast_dev_run(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_fit_args(demo_root, "--config", str(CONFIGS / "debug/fast_dev_run.yaml"),
                         "--trainer.default_root_dir", str(tmp_path / "run"))
    assert main(args) == 0


def test_configs_compose_with_a_manifest_and_write_a_checkpoint(demo_root, demo_manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_fit_args(demo_root)[:5] + [
        "--config", str(CONFIGS / "data/manifest.yaml"),
        "--data.manifest", str(demo_manifest),
        "--data.crop_size", "32",
        "--data.num_workers", "0",
        "--trainer.max_steps", "2",
        "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]
    assert main(args) == 0
    checkpoints = sorted((tmp_path / "run").rglob("last.ckpt"))
    assert checkpoints, "fit wrote no last.ckpt"
    checkpoint = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert sorted(checkpoint["modality_table"]["names"]) == ["FLAIR", "PD", "T1", "T2"]
    assert checkpoint["hyper_parameters"]["net"]["init_args"]["preset"] == "test"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.net.init_args.mask_ratio", "1.5"], "mask_ratio must lie in (0, 1), got 1.5"),
        (["--model.net.init_args.img_size", "40"], "img_size (40, 40, 40) is not divisible by patch_size"),
        (["--model.net.init_args.preset", "huge"], "unknown model preset 'huge'"),
        (["--data.crop_size", "48"], "data.crop_size (48, 48, 48) differs from the network's img_size"),
    ],
)
def test_bad_config_values_fail_naming_the_value(override, message, demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_fit_args(demo_root, "--config", str(CONFIGS / "debug/fast_dev_run.yaml"), *override)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_missing_manifest_fails_naming_the_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "pretrain/quickstart.yaml"),
            "--config", str(CONFIGS / "data/manifest.yaml"), "--data.manifest", str(tmp_path / "nowhere.csv")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "manifest not found" in err and "nowhere.csv" in err


def test_predict_with_an_unseen_modality_writes_embeddings_and_the_extended_table(demo_root, demo_manifest, tmp_path,
                                                                                  monkeypatch):
    from brainfm_lightning.modalities import ModalityTable

    monkeypatch.chdir(tmp_path)
    assert main(tiny_fit_args(demo_root, "--trainer.max_steps", "1", "--trainer.max_epochs", "1",
                              "--trainer.default_root_dir", str(tmp_path / "run"))) == 0
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    rows = demo_manifest.read_text().splitlines()
    renamed = [rows[0]] + [r.replace(",FLAIR,", ",T2-FLAIR 3D SPACE,") for r in rows[1:]]
    manifest = demo_root / "renamed_for_predict.csv"  # beside the scans, so relative paths still resolve
    manifest.write_text("\n".join(renamed) + "\n")
    args = ["predict", "--config", str(CONFIGS / "pretrain/quickstart.yaml"),
            "--config", str(CONFIGS / "model/test.yaml"), "--config", str(CONFIGS / "predict/embeddings.yaml"),
            "--config", str(CONFIGS / "data/manifest.yaml"), "--data.manifest", str(manifest),
            "--data.crop_size", "32", "--data.num_workers", "0", "--ckpt_path", str(checkpoint),
            "--trainer.callbacks.init_args.output_dir", str(tmp_path / "predictions")]
    assert main(args) == 0
    saved = torch.load(tmp_path / "predictions/embeddings-rank0.pt", weights_only=True)
    assert len(saved["session_ids"]) == 6 and saved["embeddings"].shape == (6, 48)
    assert any("T2-FLAIR 3D SPACE" in mods for mods in saved["modalities"])
    table = ModalityTable.load(tmp_path / "predictions/modality_table.safetensors")
    assert {"T1", "T2", "PD", "FLAIR", "T2-FLAIR 3D SPACE"} <= set(table.names)

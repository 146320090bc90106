"""brainfm export: checkpoints of brainfm fit -> folders that a fresh process loads bit for bit, without pickle."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS
from exported import assert_no_pickle, example_inputs, network_outputs, outputs_in_fresh_process
from trainers import cpu_trainer

from brainfm_lightning.cli import main
from brainfm_lightning.commands.export import segmenter_from_hparams
from brainfm_lightning.modalities import ModalityTable
from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules import MAEPretrainModule, SegmentationModule
from data_modules import ManifestDataModule

FILES = ["README.md", "config.json", "modality_table.safetensors", "model.safetensors"]


@pytest.fixture(scope="module")
def pretraining_checkpoint(demo_manifest, tmp_path_factory) -> Path:
    """One pretraining step of the test preset, saved the way ModelCheckpoint saves."""
    root = tmp_path_factory.mktemp("export_pretrain")
    torch.manual_seed(0)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1)
    run = cpu_trainer(root, limit_val_batches=0)
    run.fit(module, datamodule=ManifestDataModule(str(demo_manifest), crop_size=32, batch_size=2, num_workers=0))
    run.save_checkpoint(root / "pretrain.ckpt")
    return root / "pretrain.ckpt"


@pytest.fixture(scope="module")
def segmentation_checkpoint(demo_root, tmp_path_factory) -> Path:
    """last.ckpt of a one-step ``brainfm fit`` of the segmentation demo on the test preset (LightningCLI hparams)."""
    root = tmp_path_factory.mktemp("export_seg")
    args = ["fit", "--config", str(CONFIGS / "finetune/seg_demo.yaml"), "--config", str(CONFIGS / "model/test.yaml"),
            "--data.root", str(demo_root), "--data.n_subjects", "6", "--data.demo_spacing", "4.0",
            "--data.spacing", "4.0", "--data.num_workers", "0", "--data.batch_size", "1",
            "--model.head.feature_size", "4", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(args) == 0
    (path,) = root.glob("**/checkpoints/last.ckpt")
    return path


def export(ckpt: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--data-source", "SYNTHETIC demo (test)"]) == 0
    assert str(out) in capsys.readouterr().out
    recorded = torch.load(ckpt, map_location="cpu", weights_only=True).get("preprocessing")
    extra = ["preprocessing.json"] if recorded else []  # a fine-tuned segmenter's training spacing
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES + extra)
    if recorded:
        assert json.loads((out / "preprocessing.json").read_text()) == recorded
    assert_no_pickle(out)


def test_a_pretraining_export_loads_bit_for_bit_in_a_fresh_process(pretraining_checkpoint, tmp_path, capsys):
    export(pretraining_checkpoint, tmp_path / "mae", capsys)
    checkpoint = torch.load(pretraining_checkpoint, map_location="cpu", weights_only=True)
    table = ModalityTable.from_state(checkpoint["modality_table"])
    card = (tmp_path / "mae" / "README.md").read_text()
    facts = ("`ModalityMAE`, preset `test`", "| Training steps | 1 |", "SYNTHETIC demo (test)", ", ".join(table.names))
    for fact in facts:
        assert fact in card, fact

    reference = ModalityMAE.from_checkpoint(pretraining_checkpoint).eval()
    inputs = example_inputs(len(table))
    expected = network_outputs(reference, torch.from_numpy(table.vectors), inputs)
    got = outputs_in_fresh_process("brainfm_lightning.models", "ModalityMAE", tmp_path / "mae", inputs, tmp_path)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def test_a_segmentation_export_loads_bit_for_bit_in_a_fresh_process(segmentation_checkpoint, tmp_path, capsys):
    export(segmentation_checkpoint, tmp_path / "seg", capsys)
    module = SegmentationModule.load_from_checkpoint(segmentation_checkpoint, map_location="cpu").eval()
    hparams = torch.load(segmentation_checkpoint, weights_only=True)["hyper_parameters"]
    assert "SegmentationModule" in hparams["_class_path"]  # the class_path hyperparameters of brainfm fit
    assert hparams["head"]["class_path"].endswith("ModalityUNETR") and "num_classes" not in hparams
    assert hparams["head"]["init_args"]["feature_size"] == module.segmenter.feature_size == 4
    inputs = example_inputs(len(module.modality_table))
    expected = network_outputs(module.segmenter, torch.from_numpy(module.modality_table.vectors), inputs)
    got = outputs_in_fresh_process("brainfm_lightning.models.seg_head", "ModalityUNETR", tmp_path / "seg", inputs,
                                   tmp_path)
    assert torch.equal(expected["logits"], got["logits"])


def test_the_segmenter_is_rebuilt_from_the_head_hyperparameters():
    encoder = ModalityMAE.from_preset("test")
    head = {"class_path": "brainfm_lightning.models.ModalityUNETR", "init_args": {"num_classes": 3, "feature_size": 4}}
    network = segmenter_from_hparams({"head": head}, encoder, "run.ckpt")
    assert (network.num_classes, network.feature_size, network.net) == (3, 4, encoder)
    legacy = segmenter_from_hparams({"num_classes": 3, "feature_size": 8}, encoder, "old.ckpt")  # before injection
    assert (legacy.num_classes, legacy.feature_size) == (3, 8)
    with pytest.raises(ValueError, match="run.ckpt: the head 'torch.nn.Linear' is not a ModalityUNETR"):
        segmenter_from_hparams({"head": {"class_path": "torch.nn.Linear"}}, encoder, "run.ckpt")
    with pytest.raises(ValueError, match=r"run.ckpt: the head's init_args \{'width': 3\} do not fit"):
        segmenter_from_hparams({"head": head | {"init_args": {"width": 3}}}, encoder, "run.ckpt")


def test_the_saved_config_of_a_run_from_an_extending_config_runs_again_elsewhere(segmentation_checkpoint, tmp_path,
                                                                               monkeypatch, capsys):
    """seg_demo.yaml extends the trainer fragment: its run's config.yaml holds the merged values, ``extends: null``."""
    saved = segmentation_checkpoint.parents[1] / "config.yaml"
    recorded = yaml.safe_load(saved.read_text())
    assert recorded["extends"] is None and recorded["trainer"]["log_every_n_steps"] == 2  # the fragment's value
    assert [c["class_path"].rsplit(".", 1)[-1] for c in recorded["trainer"]["callbacks"]] == [
        "LearningRateMonitor", "TrainingSummary", "ModelCheckpoint"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == recorded


def test_missing_unreadable_and_unsupported_checkpoints_fail_naming_the_file(pretraining_checkpoint, tmp_path,
                                                                              capsys):
    missing = tmp_path / "nothing.ckpt"
    assert main(["export", "--ckpt", str(missing), "--out", str(tmp_path / "a")]) == 2
    assert f"checkpoint not found: {missing}" in capsys.readouterr().err

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    assert main(["export", "--ckpt", str(text), "--out", str(tmp_path / "b")]) == 2
    assert f"cannot read checkpoint {text}" in capsys.readouterr().err

    checkpoint = torch.load(pretraining_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["head.weight"] = torch.zeros(2, 48)  # a classifier: encoder plus a head
    checkpoint["hyper_parameters"]["_class_path"] = "brainfm_lightning.modules.ClassificationModule"
    classifier = tmp_path / "classifier.ckpt"
    torch.save(checkpoint, classifier)
    assert main(["export", "--ckpt", str(classifier), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert str(classifier) in err and "ClassificationModule" in err and "MAEPretrainModule" in err
    assert not (tmp_path / "c").exists()


def test_weights_that_do_not_fit_the_checkpoint_config_and_a_used_folder_are_refused(pretraining_checkpoint,
                                                                                     tmp_path, capsys):
    checkpoint = torch.load(pretraining_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["net_config"]["depth"] = 3
    wrong = tmp_path / "wrong.ckpt"
    torch.save(checkpoint, wrong)
    assert main(["export", "--ckpt", str(wrong), "--out", str(tmp_path / "a")]) == 2
    assert "depth: the config says 3, the weights hold 2" in capsys.readouterr().err

    used = tmp_path / "used"
    used.mkdir()
    (used / "README.md").write_text("another model")
    assert main(["export", "--ckpt", str(pretraining_checkpoint), "--out", str(used)]) == 2
    assert f"--out {used} is not an empty folder" in capsys.readouterr().err


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["export", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for part in ("--ckpt CKPT", "--out DIR", "--data-source TEXT", "config.json", "model.safetensors",
                 "from_pretrained"):
        assert part in text, part
    main(["--help"])
    assert "export" in capsys.readouterr().out

"""Every shipped config composition that the README and the scripts use parses to the values it promises.

``--print_config`` parses and validates without building a model, so GPU-only and BioBERT configs check on a CPU.
"""

import pytest
import yaml
from conftest import CONFIGS

from brainfm_lightning.cli import main

COMPOSITIONS = {
    "fomo25 on one GPU": ["pretrain/fomo25_base.yaml", "trainer/gpu.yaml"],
    "fomo25 on SLURM": ["pretrain/fomo25_base.yaml", "trainer/ddp_gpu.yaml", "trainer/slurm.yaml",
                        "logger/wandb.yaml"],
    "quickstart": ["pretrain/quickstart.yaml"],
    "segmentation": ["finetune/seg_demo.yaml"],
    "classification": ["finetune/cls_demo.yaml"],
    "u-net baseline": ["finetune/unet_baseline.yaml"],
    "compare pretraining": ["pretrain/quickstart.yaml", "compare/demo_4mm.yaml", "compare/brainfm_32.yaml"],
    "compare segmentation": ["finetune/seg_demo.yaml", "compare/demo_4mm.yaml", "compare/brainfm_32.yaml"],
    "compare u-net": ["finetune/unet_baseline.yaml", "compare/demo_4mm.yaml", "compare/unet_32.yaml"],
}


def printed_config(configs, capsys, *overrides: str):
    """The config ``brainfm fit`` prints for ``configs`` (names under configs/ or paths) and ``overrides``."""
    args = ["fit", *[item for name in configs for item in ("--config", str(CONFIGS / name))], *overrides,
            "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", COMPOSITIONS)
def test_shipped_compositions_parse(name, capsys):
    config = printed_config(COMPOSITIONS[name], capsys)
    assert config["model"]["class_path"].startswith("brainfm_lightning.modules.")
    assert config["data"]["class_path"].startswith("data_modules.")


def test_gpu_pretraining_uses_bf16_compile_and_clipping_without_a_fused_optimizer(capsys):
    config = printed_config(COMPOSITIONS["fomo25 on one GPU"], capsys)
    model = config["model"]["init_args"]
    assert config["trainer"]["precision"] == "bf16-mixed" and model["compile"] is True
    assert model["net"]["init_args"]["pad_free"] is True
    # Lightning's mixed-precision plugin raises on gradient clipping with optimizers that unscale in step()
    assert config["trainer"]["gradient_clip_val"] > 0 and not model["optimizer"]["init_args"].get("fused")


def test_compare_fragments_set_the_crop_everywhere(capsys):
    seg = printed_config(COMPOSITIONS["compare segmentation"], capsys)
    net = seg["model"]["init_args"]["net"]["init_args"]
    assert (net["img_size"], net["patch_size"], seg["data"]["init_args"]["crop_size"]) == (32, 8, 32)
    unet = printed_config(COMPOSITIONS["compare u-net"], capsys)
    assert unet["model"]["init_args"]["img_size"] == unet["data"]["init_args"]["crop_size"] == 32
    assert unet["data"]["init_args"]["spacing"] == seg["data"]["init_args"]["spacing"] == 4.0


def test_segmenters_fine_tune_on_augmented_crops_and_the_compare_fragments_keep_it(capsys):
    """Without augmentation 8 labelled subjects overfit (docs/label_efficiency.md 2.13); BrainFM and the U-Net alike."""
    for name in ("segmentation", "u-net baseline", "compare segmentation", "compare u-net"):
        assert printed_config(COMPOSITIONS[name], capsys)["data"]["init_args"]["augment"] is True, name
    off = printed_config(COMPOSITIONS["segmentation"], capsys, "--data.init_args.augment", "false")
    assert off["data"]["init_args"]["augment"] is False


def test_the_finetune_configs_share_the_trainer_fragment(capsys):
    """Each fine-tune config extends configs/trainer/finetune_cpu.yaml and adds only its checkpoint metric."""
    for name, metric in (("segmentation", "val/dice"), ("classification", "val/loss"), ("u-net baseline", "val/dice")):
        trainer = printed_config(COMPOSITIONS[name], capsys)["trainer"]
        assert (trainer["accelerator"], trainer["devices"], trainer["precision"]) == ("cpu", 1, "32-true")
        assert trainer["logger"]["init_args"]["save_dir"] == trainer["default_root_dir"]
        kinds = [callback["class_path"].rsplit(".", 1)[-1] for callback in trainer["callbacks"]]
        assert kinds == ["LearningRateMonitor", "TrainingSummary", "ModelCheckpoint"]
        assert trainer["callbacks"][-1]["init_args"]["monitor"] == metric


def test_a_file_overrides_what_it_extends_the_command_line_both_and_the_result_runs_again(tmp_path, capsys):
    (tmp_path / "fragment.yaml").write_text("trainer: {max_epochs: 5, log_every_n_steps: 7, "
                                            "default_root_dir: from_fragment}\n")
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(f"extends: [{CONFIGS / 'finetune/seg_demo.yaml'}, fragment.yaml]\n"
                          "trainer: {max_epochs: 9}\n")
    config = printed_config([experiment], capsys, "--trainer.log_every_n_steps", "11")
    trainer = config["trainer"]
    assert (trainer["max_epochs"], trainer["log_every_n_steps"]) == (9, 11)
    assert trainer["default_root_dir"] == trainer["logger"]["init_args"]["save_dir"] == "from_fragment"
    assert config["model"]["init_args"]["head"]["init_args"]["feature_size"] == 16  # seg_demo's own values
    assert config["extends"] is None  # applied already: a saved config does not read the fragments again

    saved = tmp_path / "saved" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(yaml.safe_dump(config))
    assert printed_config([saved], capsys) == config


def test_a_missing_fragment_fails_naming_it(tmp_path, capsys):
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("extends: ../trainer/nowhere.yaml\n")
    assert main(["fit", "--config", str(experiment), "--print_config"]) == 2
    assert f"extends ../trainer/nowhere.yaml, but {tmp_path}/../trainer/nowhere.yaml does not exist" in \
        capsys.readouterr().err

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


def printed_config(configs, capsys):
    args = ["fit", *[item for name in configs for item in ("--config", str(CONFIGS / name))], "--print_config"]
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

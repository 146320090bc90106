"""Strict transfer: a pretraining checkpoint fills every encoder weight of a fine-tune module, or fails naming keys."""

import re
from functools import partial

import numpy as np
import pytest
import torch
from conftest import CONFIGS

from brainfm_lightning.cli import main
from brainfm_lightning.models import ModalityMAE, ModalityUNETR
from brainfm_lightning.models.pos_embed import interpolate_pos_embed
from brainfm_lightning.modules import ClassificationModule, SegmentationModule

MISSING_KEY = "net.encoder.blocks.1.attn.qkv.weight"
MODULES = {
    "segmentation": lambda **kw: SegmentationModule(ModalityMAE.from_preset("test", **kw.pop("net", {})),
                                                    partial(ModalityUNETR, feature_size=4), **kw),
    "classification": lambda **kw: ClassificationModule(ModalityMAE.from_preset("test", **kw.pop("net", {})), **kw),
}


def edited(path, folder, edit) -> str:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    edit(checkpoint["state_dict"])
    torch.save(checkpoint, folder / "edited.ckpt")
    return str(folder / "edited.ckpt")


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_a_checkpoint_without_one_encoder_key_is_refused_with_its_name(kind, pretrained, tmp_path):
    path = edited(pretrained[0], tmp_path, lambda state: state.pop(MISSING_KEY))
    with pytest.raises(ValueError, match=rf"1 problems: missing {re.escape(MISSING_KEY)}\. .*allow_partial"):
        MODULES[kind](pretrained=path)
    module = MODULES[kind](pretrained=path, allow_partial=True)
    assert module.pretrained_report.missing == [MISSING_KEY.removeprefix("net.")]
    source = pretrained[1].state_dict()
    loaded = {k: v for k, v in module.net.state_dict().items() if f"net.{k}" != MISSING_KEY}
    assert all(torch.equal(v, source[k]) for k, v in loaded.items())


def test_the_cli_refuses_a_partial_encoder_naming_the_key(pretrained, demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = edited(pretrained[0], tmp_path, lambda state: state.pop(MISSING_KEY))
    code = main(["fit", "--config", str(CONFIGS / "finetune/seg_demo.yaml"),
                 "--config", str(CONFIGS / "model/test.yaml"), "--data.root", str(demo_root),
                 "--model.pretrained", path, "--trainer.fast_dev_run", "true"])
    assert code == 2
    assert f"missing {MISSING_KEY}" in capsys.readouterr().err


def test_torch_compile_prefixes_are_understood(pretrained, tmp_path):
    def compiled(state: dict) -> None:
        for key in [k for k in state if k.startswith("net.encoder.blocks.")]:
            state[key.replace("net.encoder.blocks.0.", "net.encoder.blocks.0._orig_mod.")
                  .replace("net.", "net._orig_mod.", 1)] = state.pop(key)

    module = MODULES["segmentation"](pretrained=edited(pretrained[0], tmp_path, compiled))
    report, source = module.pretrained_report, pretrained[1].state_dict()
    assert report.missing == report.unexpected == report.mismatched == []
    assert all(torch.equal(v, source[k]) for k, v in module.net.state_dict().items())


def test_pos_embed_interpolation_is_trilinear_on_the_row_major_grid():
    old, new = (2, 3, 4), (4, 6, 8)
    coords = np.stack(np.meshgrid(*(np.arange(g) for g in old), indexing="ij"), axis=-1).reshape(1, -1, 3)
    resized = interpolate_pos_embed(torch.from_numpy(coords).double(), old, new).numpy().reshape(*new, 3)
    for axis in range(3):  # a coordinate ramp stays a ramp: align_corners=False, clamped at the border
        source = np.clip((np.arange(new[axis]) + 0.5) * old[axis] / new[axis] - 0.5, 0, old[axis] - 1)
        shape = [1, 1, 1]
        shape[axis] = new[axis]
        np.testing.assert_allclose(resized[..., axis], np.broadcast_to(source.reshape(shape), new), atol=1e-12)
    same = torch.randn(1, 24, 5)
    assert interpolate_pos_embed(same, old, old) is same
    with pytest.raises(ValueError, match="not \\[1, 24, D\\]"):
        interpolate_pos_embed(torch.randn(1, 20, 5), old, new)


def test_a_larger_fine_tune_crop_gets_interpolated_positional_embeddings(tmp_path):
    torch.manual_seed(0)
    source = ModalityMAE.from_preset("test", positions="crop")  # learnable tables on the crop's 2^3 grid
    path = tmp_path / "crop_positions.ckpt"
    torch.save({"net_config": dict(source.config),
                "state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, path)
    module = MODULES["segmentation"](pretrained=str(path), net={"img_size": 48, "positions": "crop"})  # -> 3^3
    assert module.pretrained_report.interpolated == ["pos_embed", "decoder_pos_embed"]
    expected = interpolate_pos_embed(source.pos_embed.detach(), (2, 2, 2), (3, 3, 3))
    assert torch.equal(module.net.pos_embed.detach(), expected)
    assert torch.equal(module.net.encoder.blocks[1].attn.qkv.weight, source.encoder.blocks[1].attn.qkv.weight)
    logits = module.eval()(torch.randn(1, 2, 48, 48, 48), module.modality_embeddings([["T1", "T2"]], torch.zeros(1)),
                           torch.ones(1, 2, dtype=torch.bool))
    assert logits.shape == (1, 2, 48, 48, 48) and torch.isfinite(logits).all()


def test_head_positions_need_no_interpolation_for_a_larger_crop(pretrained):
    path, source = pretrained
    module = MODULES["segmentation"](pretrained=str(path), net={"img_size": 48})  # 2^3 patch grid -> 3^3
    assert module.pretrained_report.interpolated == []
    assert torch.equal(module.net.encoder.blocks[1].attn.qkv.weight, source.encoder.blocks[1].attn.qkv.weight)


def test_a_crop_positions_checkpoint_does_not_fit_a_head_positions_network(tmp_path):
    source = ModalityMAE.from_preset("test", positions="crop")
    path = tmp_path / "crop_positions.ckpt"
    torch.save({"net_config": dict(source.config),
                "state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, path)
    with pytest.raises(ValueError, match="unexpected net.pos_embed.*positions"):
        MODULES["segmentation"](pretrained=str(path))


@pytest.mark.parametrize("exported", ["encoder", "segmenter"])
def test_an_export_folder_fills_the_encoder_like_its_checkpoint(pretrained, tmp_path, exported):
    """model.pretrained also takes a brainfm export / save_pretrained folder (no pickle): an encoder's, or a
    fine-tuned segmenter's, whose encoder is taken."""
    network = pretrained[1]
    if exported == "encoder":
        network.save_pretrained(tmp_path / "export")
    else:
        ModalityUNETR(network, num_classes=2, feature_size=4).save_pretrained(tmp_path / "export")
    module = MODULES["segmentation"](pretrained=str(tmp_path / "export"))
    report, source = module.pretrained_report, network.state_dict()
    assert report.missing == report.unexpected == report.mismatched == []
    assert all(torch.equal(v, source[k]) for k, v in module.net.state_dict().items())
    with pytest.raises(FileNotFoundError, match="config.json"):
        MODULES["segmentation"](pretrained=str(tmp_path))

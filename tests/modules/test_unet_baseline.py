"""UNetBaselineModule: fixed channels with exact zero-filling, deep supervision, training, robustness, the CLI."""

import math

import pytest
import torch
from conftest import CONFIGS

from brainfm_lightning.cli import main
from brainfm_lightning.evaluation import evaluate_modality_subsets
from brainfm_lightning.modules import UNetBaselineModule
from brainfm_lightning.modules.unet_baseline import to_channels
from data_modules import ManifestDataModule

CHANNELS = ["T1", "T2", "PD", "FLAIR"]


def unet(**kwargs) -> UNetBaselineModule:
    torch.manual_seed(0)
    return UNetBaselineModule(CHANNELS, img_size=32, filters=[4, 8, 16, 32], **kwargs)


def logits(module, images, names, present=None) -> torch.Tensor:
    present = torch.ones(images.shape[:2], dtype=torch.bool) if present is None else present
    with torch.no_grad():
        return module(images, module.modality_embeddings(names, like=images), present)


def test_missing_modalities_are_exactly_zero_channels_in_any_slot_order():
    module = unet().eval()
    t1, flair = torch.randn(2, 1, 1, 32, 32, 32).unbind(0)
    zeros = torch.zeros_like(t1)
    only_t1 = logits(module, t1, [["T1"]])
    explicit = logits(module, torch.cat([t1, zeros, zeros, zeros], 1), [CHANNELS])
    assert only_t1.shape == (1, 2, 32, 32, 32) and torch.isfinite(only_t1).all()
    assert torch.equal(only_t1, explicit)
    padded = logits(module, torch.cat([t1, torch.full_like(t1, math.nan)], 1), [["T1", ""]],
                    torch.tensor([[True, False]]))
    assert torch.equal(padded, only_t1)  # a padded slot is ignored, whatever it holds
    swapped = logits(module, torch.cat([flair, t1], 1), [["FLAIR", "T1"]])
    assert torch.equal(swapped, logits(module, torch.cat([t1, flair], 1), [["T1", "FLAIR"]]))
    assert not torch.equal(swapped, only_t1)


def test_slots_land_on_their_channels():
    images = torch.arange(3.0)[None, :, None, None, None].expand(1, 3, 2, 2, 2)  # slot m holds the value m
    one_hot = torch.tensor([[[0.0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]])  # FLAIR, T1, padding
    channels = to_channels(images, one_hot, torch.tensor([[True, True, False]]))
    assert channels[0, :, 0, 0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_deep_supervision_trains_every_head_at_full_resolution_and_infers_with_the_main_one():
    module = unet(deep_supervision=True, deep_supervision_heads=2)
    images = torch.randn(2, 2, 32, 32, 32)
    embeddings = module.modality_embeddings([["T1", "T2"], ["PD", "FLAIR"]], like=images)
    heads = module.train()(images, embeddings, torch.ones(2, 2, dtype=torch.bool))
    assert [tuple(h.shape) for h in heads] == [(2, 2, 32, 32, 32)] * 3
    module.eval()
    with torch.no_grad():
        main_head = module(images, embeddings, torch.ones(2, 2, dtype=torch.bool))
        windows = module.predict_logits(torch.randn(1, 2, 48, 40, 32), embeddings[:1], torch.ones(1, 2).bool())
    torch.testing.assert_close(main_head, heads[0].detach())
    assert windows.shape == (1, 2, 48, 40, 32) and torch.isfinite(windows).all()


def test_a_training_step_gives_a_finite_loss_and_gradients_everywhere(demo_manifest):
    data = ManifestDataModule(str(demo_manifest), spacing=4.0,
                              crop_size=32, batch_size=2, num_workers=0, with_label=True)
    module = unet(deep_supervision=True)
    loss = module.training_step(next(iter(data.train_dataloader())), 0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()] == []


def test_unknown_modalities_raise_or_are_dropped_with_a_warning():
    images = torch.randn(1, 2, 32, 32, 32)
    with pytest.raises(ValueError, match=r"modalities \['SWI'\] are not input channels"):
        unet().modality_embeddings([["T1", "SWI"]], like=images)
    lenient = unet(unknown_modalities="ignore").eval()
    with pytest.warns(UserWarning, match=r"\['SWI'\] .* dropped"):
        with_swi = logits(lenient, images, [["T1", "SWI"]])
    torch.testing.assert_close(with_swi, logits(lenient, images[:, :1], [["T1"]]))


def test_robustness_evaluation_drops_modalities_through_present(tmp_path):
    module = unet().eval()
    lesion = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    lesion[..., 10:16, 10:16, 10:16] = 1
    batch = {"images": torch.randn(1, 3, 32, 32, 32), "present": torch.ones(1, 3, dtype=torch.bool),
             "modalities": [["T1", "T2", "FLAIR"]], "session_ids": ["sub-1"], "label": lesion}
    summary = evaluate_modality_subsets(module, [batch], tmp_path, spacing=4.0)
    assert len(summary) == 7 and {r["subset"] for r in summary} >= {"FLAIR", "T1+T2", "FLAIR+T1+T2"}


def test_checkpoints_keep_the_channel_list(tmp_path):
    checkpoint: dict = {}
    unet().on_save_checkpoint(checkpoint)
    assert checkpoint["modality_channels"] == CHANNELS
    with pytest.raises(ValueError, match=r"channels \['T1', 'T2', 'PD', 'FLAIR'\] differ"):
        UNetBaselineModule(["T1", "FLAIR"], img_size=32, filters=[4, 8, 16]).on_load_checkpoint(checkpoint)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(img_size=36), r"img_size \(36, 36, 36\) is not divisible by 2 \*\* \(len\(filters\) - 1\) = 8"),
     (dict(modalities=["T1", "T1"]), "modalities must be distinct"),
     (dict(unknown_modalities="skip"), "unknown_modalities must be"),
     (dict(deep_supervision=True, deep_supervision_heads=3), r"deep_supervision_heads must lie in \[1, 2\]"),
     (dict(num_classes=1), "num_classes must be >= 2"),
     (dict(filters=[4, 8]), r"filters needs at least 3 resolution levels, got \[4, 8\]")],
)
def test_bad_arguments_fail_naming_the_value(kwargs, message):
    defaults = dict(modalities=CHANNELS, img_size=32, filters=[4, 8, 16, 32])
    with pytest.raises(ValueError, match=message):
        UNetBaselineModule(**(defaults | kwargs))


def test_cli_fast_dev_run_with_the_baseline_config(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "finetune/unet_baseline.yaml"),
            "--config", str(CONFIGS / "debug/fast_dev_run.yaml"), "--data.root", str(demo_root),
            "--data.n_subjects", "6", "--data.demo_spacing", "4.0", "--data.spacing", "4.0",
            "--data.crop_size", "32", "--data.num_workers", "0", "--data.batch_size", "1",
            "--model.img_size", "32", "--model.filters", "[4, 8, 16, 32]"]
    assert main(args) == 0

"""SegmentationModule: pretrained loading, freezing, any modality subset, sliding windows, training and the CLI."""

import csv
import math
from functools import partial

import pytest
import torch
from conftest import CONFIGS
from trainers import cpu_trainer as trainer

from brainfm_lightning.cli import main
from brainfm_lightning.commands.config import build_from_configs
from brainfm_lightning.evaluation import evaluate_modality_subsets
from brainfm_lightning.models import ModalityMAE, ModalityUNETR
from brainfm_lightning.models.seg_head import encoder_hidden_states, fuse_modalities
from brainfm_lightning.modules import SegmentationModule
from brainfm_lightning.modules import transfer as transfer_module
from data_modules import ManifestDataModule

MODALITIES = ["T1", "T2", "PD", "FLAIR"]




def datamodule(manifest, batch_size: int = 2) -> ManifestDataModule:
    return ManifestDataModule(str(manifest), spacing=4.0,
                              crop_size=32, batch_size=batch_size, num_workers=0, with_label=True)


def segmenter(num_classes: int = 2, **kwargs) -> SegmentationModule:
    head = partial(ModalityUNETR, num_classes=num_classes, feature_size=4)
    return SegmentationModule(ModalityMAE.from_preset("test"), head, **kwargs)


def test_pretrained_weights_and_modality_table_load_with_a_report(pretrained, monkeypatch):
    path, source = pretrained
    messages: list[str] = []
    monkeypatch.setattr(transfer_module, "rank_zero_info", messages.append)
    module = segmenter(pretrained=str(path))
    assert all(torch.equal(a, b) for a, b in zip(module.net.state_dict().values(), source.state_dict().values()))
    assert sorted(module.modality_table.names) == sorted(MODALITIES)
    report = module.pretrained_report
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == len(source.state_dict())
    assert len(messages) == 1 and "0 missing" in messages[0] and str(path) in messages[0]


def test_missing_and_unexpected_encoder_keys_are_refused_unless_partial_is_allowed(pretrained, tmp_path):
    path, _ = pretrained
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    del checkpoint["state_dict"]["net.encoder.norm.to_scale_shift.bias"]
    checkpoint["state_dict"]["net.encoder.blocks.7.attn.qkv.weight"] = torch.zeros(3)
    checkpoint["state_dict"]["net.extra_head.weight"] = torch.zeros(3)  # not the encoder's: reported only
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(ValueError, match=r"missing net\.encoder\.norm\.to_scale_shift\.bias; "
                                         r"unexpected net\.encoder\.blocks\.7\.attn\.qkv\.weight"):
        segmenter(pretrained=str(tmp_path / "edited.ckpt"))
    report = segmenter(pretrained=str(tmp_path / "edited.ckpt"), allow_partial=True).pretrained_report
    assert report.missing == ["encoder.norm.to_scale_shift.bias"]
    assert report.unexpected == ["encoder.blocks.7.attn.qkv.weight", "extra_head.weight"]
    assert "1 missing" in str(report) and "extra_head.weight" in str(report)


def test_shape_mismatch_raises_naming_the_key(pretrained, tmp_path):
    path, _ = pretrained
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["state_dict"]["net.encoder.blocks.0.mlp.fc1.weight"] = torch.zeros(96, 64)  # another width
    torch.save(checkpoint, tmp_path / "mismatched.ckpt")
    with pytest.raises(ValueError, match=r"net\.encoder\.blocks\.0\.mlp\.fc1\.weight: checkpoint \(96, 64\) "
                                         r"vs network \(192, 48\)"):
        segmenter(pretrained=str(tmp_path / "mismatched.ckpt"))


@pytest.mark.parametrize("freeze", ["none", "partial", "full"])
def test_gradients_reach_every_trainable_parameter_and_no_frozen_one(pretrained, demo_manifest, freeze):
    batch = next(iter(datamodule(demo_manifest, batch_size=1).train_dataloader()))
    module = segmenter(pretrained=str(pretrained[0]), freeze_encoder=freeze)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()] == []
    assert all(p.grad is None for p in module.parameters() if not p.requires_grad)
    encoder = [n for n in trainable if n.startswith("segmenter.net.")]
    assert not any(n.startswith("segmenter.net.decoder") for n in encoder)  # the MAE's reconstruction decoder
    expected = {"none": 30, "partial": 14, "full": 0}[freeze]  # test preset: embeddings 4, 2 blocks x 12, norm 2
    assert len(encoder) == expected


def test_hidden_states_follow_the_encoder_and_fuse_present_slots_only():
    torch.manual_seed(0)
    packed = ModalityMAE.from_preset("test", pad_free=True).eval()
    padded = ModalityMAE.from_preset("test", pad_free=False).eval()
    padded.load_state_dict(packed.state_dict())
    images, embeddings = torch.randn(2, 3, 32, 32, 32), torch.randn(2, 3, 384)
    present = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        states, valid = encoder_hidden_states(packed, images, embeddings, present, [0, 1, 2])
        padded_states, _ = encoder_hidden_states(padded, images, embeddings, present, [0, 1, 2])
        encoded = packed.encode(images, embeddings, present)[0]
    assert [tuple(x.shape) for x in states] == [(2, 3 * 8, 48)] * 3
    torch.testing.assert_close(states[2], encoded)
    for a, b in zip(states, padded_states):  # packed or padded compute: the same tokens where valid
        torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=1e-5)
    fused = fuse_modalities(encoded.masked_fill(~valid[..., None], float("nan")), valid, packed.grid)
    tokens = encoded.reshape(2, 3, 8, 48)  # [B, M, L, D]
    torch.testing.assert_close(fused[0], tokens[0, :2].mean(0).T.reshape(48, 2, 2, 2))
    torch.testing.assert_close(fused[1], tokens[1, 0].T.reshape(48, 2, 2, 2))


def test_output_is_the_crop_and_any_modality_subset_works(pretrained):
    module = segmenter(pretrained=str(pretrained[0])).eval()
    images = torch.randn(1, 4, 32, 32, 32)
    embeddings = module.modality_embeddings([MODALITIES], like=images)
    only_t1 = torch.tensor([[True, False, False, False]])
    with torch.no_grad():
        every = module(images, embeddings, torch.ones(1, 4, dtype=torch.bool))
        one = module(images, embeddings, only_t1)
        padded_with_nan = module(torch.cat([images[:, :1], torch.full((1, 3, 32, 32, 32), math.nan)], 1),
                                 embeddings, only_t1)
    assert every.shape == one.shape == (1, 2, 32, 32, 32)
    assert torch.isfinite(every).all() and torch.isfinite(one).all()
    assert not torch.allclose(every, one)
    torch.testing.assert_close(padded_with_nan, one)  # absent slots are ignored, whatever they hold


def test_volumes_larger_than_the_crop_use_sliding_windows(pretrained):
    module = segmenter(pretrained=str(pretrained[0])).eval()
    images = torch.randn(1, 2, 48, 40, 32)
    with torch.no_grad():
        logits = module.predict_logits(images, module.modality_embeddings([["T1", "FLAIR"]], like=images),
                                       torch.ones(1, 2, dtype=torch.bool))
    assert logits.shape == (1, 2, 48, 40, 32) and torch.isfinite(logits).all()


def test_each_window_gets_the_volumes_head_offset_plus_its_place_in_the_volume(monkeypatch):
    module = segmenter(sw_batch_size=8, sw_overlap=0.5, sw_on_lattice=False).eval()
    seen = []

    def forward(images, embeddings, present, head_offset=None):
        seen.append(head_offset)
        return torch.zeros(images.shape[0], 2, *images.shape[2:])

    monkeypatch.setattr(module, "forward", forward)
    images = torch.zeros(1, 1, 48, 32, 32)  # windows of 32 along x start at 0 and 16: centres at -8 and +8
    module.predict_logits(images, module.modality_embeddings([["T1"]], like=images), torch.ones(1, 1).bool(),
                          torch.tensor([[1.0, 2.0, 3.0]]))
    assert sorted(row.tolist() for batch in seen for row in batch) == [[-7.0, 2.0, 3.0], [9.0, 2.0, 3.0]]
    seen.clear()
    crop = torch.zeros(2, 1, 32, 32, 32)  # crops of the network's size: one pass with the batch's offsets
    module.predict_logits(crop, module.modality_embeddings([["T1"], ["T1"]], like=crop), torch.ones(2, 1).bool(),
                          torch.tensor([[4.0, 0.0, 0.0], [0.0, -8.0, 0.0]]))
    assert [batch.tolist() for batch in seen] == [[[4.0, 0.0, 0.0], [0.0, -8.0, 0.0]]]


def test_windows_on_the_lattice_sit_whole_patches_from_the_head_centre(monkeypatch):
    """``sw_on_lattice`` (the default): the volume is padded so that every window's head offset is a multiple of
    the patch size (16 here), as the training crops' are; the windows still cover the whole volume."""
    module = segmenter(sw_batch_size=8, sw_overlap=0.5).eval()
    assert module.net.patch_size == (16, 16, 16)
    seen = []

    def forward(images, embeddings, present, head_offset=None):
        seen.append(head_offset)
        return torch.ones(images.shape[0], 2, *images.shape[2:])

    monkeypatch.setattr(module, "forward", forward)
    images = torch.zeros(1, 1, 48, 32, 32)
    logits = module.predict_logits(images, module.modality_embeddings([["T1"]], like=images),
                                   torch.ones(1, 1).bool(), torch.tensor([[1.0, 2.0, 3.0]]))
    offsets = torch.cat(seen)
    assert logits.shape == (1, 2, 48, 32, 32) and torch.allclose(logits, torch.ones_like(logits))
    assert [sorted(set(offsets[:, axis].tolist())) for axis in range(3)] == [[-16.0, 0.0, 16.0], [0.0, 16.0],
                                                                             [0.0, 16.0]]


def test_training_lowers_the_loss_and_evaluation_logs_metrics(pretrained, demo_manifest, tmp_path):
    torch.manual_seed(0)
    module = segmenter(pretrained=str(pretrained[0]), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
                       warmup_steps=0, voxel_spacing=4.0)
    losses = []
    run = trainer(tmp_path, max_steps=3, overfit_batches=1, limit_val_batches=0)
    module.on_train_batch_end = lambda outputs, *_: losses.append(float(outputs["loss"]))
    run.fit(module, datamodule=datamodule(demo_manifest, batch_size=1))
    assert len(losses) == 3 and losses[-1] < losses[0]
    run.save_checkpoint(tmp_path / "finetuned.ckpt")
    restored = SegmentationModule.load_from_checkpoint(tmp_path / "finetuned.ckpt", net=ModalityMAE.from_preset("test"),
                                                       head=partial(ModalityUNETR, feature_size=4), pretrained=None)
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), module.state_dict().values()))
    assert sorted(restored.modality_table.names) == sorted(MODALITIES)
    metrics = run.test(module, datamodule=datamodule(demo_manifest), verbose=False)[0]
    assert {"test/dice", "test/hd95", "test/sensitivity", "test/specificity"} <= set(metrics)
    assert 0.0 <= metrics["test/dice"] <= 1.0 and math.isfinite(metrics["test/hd95"])
    rows = list(csv.DictReader((tmp_path / "test_metrics.csv").open()))
    assert [r["case"] for r in rows][-3:] == ["mean", "std", "n_valid"] and len(rows) == 1 + 3  # 1 held-out case
    assert {"lesion_f1", "reference_lesions", "predicted_lesions", "reference_volume_ml"} <= set(rows[0])
    assert float(rows[0]["reference_lesions"]) >= 0 and float(rows[0]["predicted_volume_ml"]) >= 0


def test_robustness_scores_every_modality_subset_of_a_session(pretrained, demo_manifest, tmp_path):
    module = segmenter(pretrained=str(pretrained[0])).eval()
    batch = next(iter(datamodule(demo_manifest, batch_size=1).val_dataloader()))
    summary = evaluate_modality_subsets(module, [batch], tmp_path, spacing=4.0)
    assert len(summary) == 2 ** int(batch["present"].sum()) - 1
    assert all(0.0 <= row["dice"] <= 1.0 for row in summary)
    assert {p.name for p in tmp_path.iterdir()} >= {"robustness.csv", "robustness.md", "robustness.png"}


def test_layer_decay_scales_learning_rates_by_depth():
    module = segmenter(layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in module.parameter_groups(0.05, 0.5) for p in g["params"]}
    named = dict(module.named_parameters())
    assert scale_of[id(named["segmenter.net.patch_embed.proj.weight"])] == 0.5**3
    assert scale_of[id(named["segmenter.net.encoder.blocks.0.attn.qkv.weight"])] == 0.5**2
    assert scale_of[id(named["segmenter.net.encoder.blocks.1.attn.qkv.weight"])] == 0.5
    assert scale_of[id(named["segmenter.decoder.out.conv.conv.weight"])] == 1.0


@pytest.mark.parametrize(("head_only", "encoder_moves"), [(4, False), (3, True), (0.5, True)])
def test_head_only_steps_hold_the_encoder_still_then_let_it_learn(pretrained, demo_manifest, tmp_path, head_only,
                                                                   encoder_moves):
    torch.manual_seed(0)
    module = segmenter(pretrained=str(pretrained[0]), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
                       warmup_steps=0, head_only_steps=head_only)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer(tmp_path, max_steps=4, overfit_batches=1, limit_val_batches=0).fit(
        module, datamodule=datamodule(demo_manifest, batch_size=1))
    moved = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    head = {k for k in moved if not k.startswith("segmenter.net.")}
    encoder = {k for k in moved if k.startswith("segmenter.net.encoder.")}
    assert "segmenter.decoder.out.conv.conv.weight" in head
    # 4 of 4 steps: the encoder's rate is zero throughout (no decay either); 3 or 0.5 of 4: it joins at the 4th or 3rd
    assert bool(encoder) is encoder_moves


def test_the_injected_head_is_the_network_and_sets_the_classes():
    module = segmenter(num_classes=3)
    assert isinstance(module.segmenter, ModalityUNETR) and module.net is module.segmenter.net
    assert module.num_classes == module.segmenter.num_classes == 3
    assert "num_classes" not in module.hparams and "head" not in module.hparams  # Python-built: injected, not saved
    logits = module(torch.randn(1, 2, 32, 32, 32), torch.randn(1, 2, 384), torch.ones(1, 2, dtype=torch.bool))
    assert logits.shape == (1, 3, 32, 32, 32)


def test_a_config_builds_the_head_it_names_with_its_init_args():
    model, _ = build_from_configs([CONFIGS / "finetune/seg_demo.yaml", CONFIGS / "model/test.yaml"],
                                  [("model.head.num_classes", "3"), ("model.head.feature_size", "4")])
    assert isinstance(model.segmenter, ModalityUNETR) and model.num_classes == 3
    assert (model.segmenter.num_classes, model.segmenter.feature_size) == (3, 4)
    assert model.segmenter.decoder.out.conv.conv.out_channels == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(num_classes=1), "num_classes must be >= 2"), (dict(freeze_encoder="half"), "freeze_encoder must be"),
     (dict(layer_decay=0.0), "layer_decay must lie in"), (dict(pretrained="nowhere.ckpt"), "nowhere.ckpt"),
     (dict(head_only_steps=-1), "head_only_steps must be >= 0")],
)
def test_bad_arguments_fail_naming_the_value(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        segmenter(**kwargs)


def test_cli_fast_dev_run_from_a_pretraining_checkpoint(pretrained, demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "finetune/seg_demo.yaml"), "--config", str(CONFIGS / "model/test.yaml"),
            "--data.root", str(demo_root), "--data.n_subjects", "6", "--data.demo_spacing", "4.0",
            "--data.spacing", "4.0", "--data.num_workers", "0", "--data.batch_size", "1",
            "--model.head.feature_size", "4",
            "--model.pretrained", str(pretrained[0]), "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main(args) == 0

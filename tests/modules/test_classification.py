"""ClassificationModule: targets from manifest columns, probes and fine-tuning, any modality subset, the CLI."""

import math
from functools import partial

import pytest
import torch
from conftest import CONFIGS
from trainers import cpu_trainer as trainer

from brainfm_lightning.cli import main
from brainfm_lightning.commands.config import build_from_configs
from brainfm_lightning.models import ClassificationHead, ModalityMAE
from brainfm_lightning.modules import ClassificationModule
from brainfm_lightning.modules.classification import parse_targets
from data_modules import ManifestDataModule

MODALITIES = ["T1", "T2", "PD", "FLAIR"]




def datamodule(manifest) -> ManifestDataModule:
    return ManifestDataModule(str(manifest), spacing=4.0, crop_size=32, batch_size=3, num_workers=0, val_fraction=0.5)


def classifier(pretrained, **kwargs) -> ClassificationModule:
    return ClassificationModule(ModalityMAE.from_preset("test"), pretrained=str(pretrained[0]), **kwargs)


def test_pretrained_weights_and_modality_table_load(pretrained):
    module = classifier(pretrained)
    assert all(torch.equal(a, b) for a, b in zip(module.net.state_dict().values(), pretrained[1].state_dict().values()))
    assert sorted(module.modality_table.names) == sorted(MODALITIES)
    assert module.pretrained_report.missing == [] and module.pretrained_report.unexpected == []


def test_mismatched_checkpoint_raises_naming_the_key(pretrained, tmp_path):
    checkpoint = torch.load(pretrained[0], map_location="cpu", weights_only=False)
    checkpoint["state_dict"]["net.modality_proj.weight"] = torch.zeros(48, 768)  # BioBERT-width table
    torch.save(checkpoint, tmp_path / "mismatched.ckpt")
    with pytest.raises(ValueError, match=r"net\.modality_proj\.weight: checkpoint \(48, 768\) vs network \(48, 384\)"):
        classifier((tmp_path / "mismatched.ckpt",))


def test_targets_parse_per_task_and_bad_values_name_the_session():
    rows = [{"has_lesion": "1", "grade": "2", "volume": "3.5"}, {"has_lesion": "False", "grade": "0", "volume": "0"}]
    ids = ["sub-1_ses-1", "sub-2_ses-1"]
    assert parse_targets(rows, "has_lesion", "binary", 2, ids).tolist() == [1.0, 0.0]
    assert parse_targets(rows, "grade", "multiclass", 3, ids).tolist() == [2, 0]
    assert parse_targets(rows, "volume", "regression", 2, ids).tolist() == [3.5, 0.0]
    with pytest.raises(ValueError, match=r"sub-1_ses-1: target grade='2' is not a valid multiclass value in \[0, 2\)"):
        parse_targets(rows, "grade", "multiclass", 2, ids)
    with pytest.raises(ValueError, match="sub-1_ses-1 has no target column 'age'"):
        parse_targets(rows, "age", "regression", 2, ids)
    with pytest.raises(ValueError, match="target volume='3.5' is not a valid binary value"):
        parse_targets(rows, "volume", "binary", 2, ids)


@pytest.mark.parametrize(("hidden", "freeze"), [(0, True), (16, False)])
def test_gradients_reach_the_trainable_parameters_only(pretrained, demo_manifest, hidden, freeze):
    module = classifier(pretrained, head=partial(ClassificationHead, hidden_features=hidden), freeze_encoder=freeze)
    batch = next(iter(datamodule(demo_manifest).train_dataloader()))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(p.grad is None for p in module.parameters() if not p.requires_grad)
    encoder = [n for n in trainable if n.startswith("net.")]
    assert len(encoder) == (0 if freeze else 30)  # test preset encoder: 30 tensors; its MAE decoder stays frozen


@pytest.mark.parametrize(("task", "target", "metrics"), [("binary", "has_lesion", ("val/acc", "val/auc")),
                                                          ("regression", "lesion_volume_ml", ("val/mae", "val/r2"))])
def test_fit_logs_finite_loss_and_task_metrics(pretrained, demo_manifest, tmp_path, task, target, metrics):
    torch.manual_seed(0)
    module = classifier(pretrained, task=task, target=target, head=partial(ClassificationHead, hidden_features=16),
                        warmup_steps=0)
    run = trainer(tmp_path, max_steps=2)
    run.fit(module, datamodule=datamodule(demo_manifest))
    assert math.isfinite(float(run.callback_metrics["train/loss"]))
    logged = run.validate(module, datamodule=datamodule(demo_manifest), verbose=False)[0]
    assert math.isfinite(logged["val/loss"])
    assert set(metrics) <= set(logged)
    if task == "binary":
        assert 0.0 <= logged["val/acc"] <= 1.0


def test_any_modality_subset_gives_finite_different_outputs(pretrained):
    module = classifier(pretrained).eval()
    images = torch.randn(1, 4, 32, 32, 32)
    embeddings = module.modality_embeddings([MODALITIES], like=images)
    with torch.no_grad():
        every = module(images, embeddings, torch.ones(1, 4, dtype=torch.bool))
        one = module(images, embeddings, torch.tensor([[False, False, False, True]]))
    assert every.shape == one.shape == (1, 1)
    assert torch.isfinite(every).all() and torch.isfinite(one).all() and not torch.allclose(every, one)


@pytest.mark.parametrize(("task", "num_classes", "outputs"), [("multiclass", 4, 4), ("binary", 4, 1),
                                                            ("regression", 2, 1)])
def test_the_injected_head_maps_the_encoder_width_to_the_task_outputs(task, num_classes, outputs):
    built = []

    def head(in_features: int, out_features: int) -> ClassificationHead:
        built.append((in_features, out_features))
        return ClassificationHead(in_features, out_features)

    module = ClassificationModule(ModalityMAE.from_preset("test"), head, task=task, num_classes=num_classes)
    assert built == [(module.net.config["embed_dim"], outputs)] and isinstance(module.head, ClassificationHead)


def test_a_config_builds_the_head_it_names_with_its_init_args():
    model, _ = build_from_configs([CONFIGS / "finetune/cls_demo.yaml", CONFIGS / "model/test.yaml"],
                                  [("model.head.hidden_features", "16"), ("model.head.dropout", "0.1")])
    assert [type(layer).__name__ for layer in model.head] == ["LayerNorm", "Linear", "GELU", "Dropout", "Linear"]
    assert (model.head[1].out_features, model.head[3].p, model.head[4].out_features) == (16, 0.1, 1)


@pytest.mark.parametrize(("kwargs", "message"), [(dict(task="ordinal"), "task must be"),
                                                 (dict(task="multiclass", num_classes=1), "num_classes must be")])
def test_bad_arguments_fail_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassificationModule(ModalityMAE.from_preset("test"), **kwargs)


def test_cli_fast_dev_run_from_a_pretraining_checkpoint(pretrained, demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "finetune/cls_demo.yaml"), "--config", str(CONFIGS / "model/test.yaml"),
            "--data.root", str(demo_root), "--data.n_subjects", "6", "--data.demo_spacing", "4.0",
            "--data.num_workers", "0", "--model.pretrained", str(pretrained[0]),
            "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main(args) == 0

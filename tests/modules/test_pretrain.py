"""MAEPretrainModule: training steps, the modality table inside checkpoints, inference without a text encoder."""

import csv

import lightning as L
import pytest
import torch

from brainfm_lightning.modalities import TextEncoderUnavailableError
from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules import MAEPretrainModule
from data_modules import ManifestDataModule


def trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    return L.Trainer(**(options | kwargs))


def datamodule(manifest, **kwargs) -> ManifestDataModule:
    return ManifestDataModule(str(manifest), spacing=4.0, crop_size=32, batch_size=2, num_workers=0, **kwargs)


@pytest.fixture(scope="module")
def trained_checkpoint(demo_manifest, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    torch.manual_seed(0)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1)
    run = trainer(root)
    run.fit(module, datamodule=datamodule(demo_manifest))
    path = root / "trained.ckpt"
    run.save_checkpoint(path)
    return path, module


def test_checkpoint_holds_the_modality_table(trained_checkpoint):
    path, module = trained_checkpoint
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    table = checkpoint["modality_table"]
    assert sorted(table["names"]) == ["FLAIR", "PD", "T1", "T2"]
    assert table["vectors"].shape == (4, 384)
    assert torch.equal(table["vectors"], torch.from_numpy(module.modality_table.vectors))
    assert checkpoint["net_config"]["preset"] == "test"


def test_network_loads_from_the_checkpoint_without_lightning(trained_checkpoint):
    path, module = trained_checkpoint
    net = ModalityMAE.from_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), module.net.state_dict().values()))
    assert net.img_size == (32, 32, 32) and net.modality_dim == 384


def test_training_batches_bring_their_crops_head_offsets_to_the_network(trained_checkpoint, demo_manifest,
                                                                         monkeypatch):
    _, module = trained_checkpoint
    seen = []
    forward = module.net.forward
    monkeypatch.setattr(module.net, "forward", lambda *args, **kwargs: seen.append(args[4]) or forward(*args, **kwargs))
    data = datamodule(demo_manifest, crop_step=16)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module(batch)
    assert seen[0] is batch["head_offset"] and seen[0].shape == (2, 3)
    # on the centred crop's 16^3 lattice; a centred crop of an odd-length head lies half a voxel off its centre
    assert set(torch.remainder(seen[0], 16).flatten().tolist()) <= {0.0, 0.5, 15.5}


def test_training_moves_every_network_parameter(demo_manifest, tmp_path):
    torch.manual_seed(1)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1)
    before = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule(demo_manifest))
    unchanged = [name for name, p in module.net.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []


def predict(module, manifest, tmp_path):
    return trainer(tmp_path).predict(module, datamodule=datamodule(manifest), return_predictions=True)


def test_checkpoint_predicts_without_a_text_encoder(trained_checkpoint, demo_manifest, tmp_path, monkeypatch):
    path, _ = trained_checkpoint
    monkeypatch.setenv("BRAINFM_TEXT_ENCODER_DISABLED", "1")
    module = MAEPretrainModule.load_from_checkpoint(path, net=ModalityMAE.from_preset("test"))
    outputs = predict(module, demo_manifest, tmp_path)
    embeddings = torch.cat([o["embedding"] for o in outputs])
    assert embeddings.shape == (6, 48) and torch.isfinite(embeddings).all()


def renamed_manifest(manifest, tmp_path, old="T1", new="MP2RAGE UNI-DEN"):
    rows = list(csv.DictReader(manifest.open()))
    for row in rows:
        row["path"] = str((manifest.parent / row["path"]).resolve())
        row["modality"] = new if row["modality"] == old else row["modality"]
    out = tmp_path / "renamed.csv"
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_unseen_modality_is_embedded_on_the_fly_and_kept(trained_checkpoint, demo_manifest, tmp_path):
    path, _ = trained_checkpoint
    module = MAEPretrainModule.load_from_checkpoint(path, net=ModalityMAE.from_preset("test"))
    outputs = predict(module, renamed_manifest(demo_manifest, tmp_path), tmp_path)
    assert any("MP2RAGE UNI-DEN" in row for o in outputs for row in o["modalities"])
    assert "MP2RAGE UNI-DEN" in module.modality_table
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)  # the next checkpoint keeps the new name
    assert "MP2RAGE UNI-DEN" in checkpoint["modality_table"]["names"]


def test_unseen_modality_without_encoder_fails_naming_the_remedy(trained_checkpoint, demo_manifest, tmp_path,
                                                                 monkeypatch):
    path, _ = trained_checkpoint
    monkeypatch.setenv("BRAINFM_TEXT_ENCODER_DISABLED", "1")
    module = MAEPretrainModule.load_from_checkpoint(path, net=ModalityMAE.from_preset("test"))
    with pytest.raises(TextEncoderUnavailableError, match="minilm"):
        predict(module, renamed_manifest(demo_manifest, tmp_path), tmp_path)


def test_nonfinite_loss_stops_naming_step_and_sessions(demo_manifest, tmp_path):
    module = MAEPretrainModule(ModalityMAE.from_preset("test"))
    with torch.no_grad():
        module.net.decoder_pred.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"global step 0 .*sessions \["):
        trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule(demo_manifest))


def test_bad_module_arguments_fail_at_once():
    with pytest.raises(ValueError, match="lambda_var"):
        MAEPretrainModule(ModalityMAE.from_preset("test"), lambda_var=-1)
    with pytest.raises(ValueError, match="nonfinite_loss"):
        MAEPretrainModule(ModalityMAE.from_preset("test"), nonfinite_loss="ignore")


def test_skipped_bad_scans_are_counted_in_the_logs(demo_manifest, tmp_path):
    import nibabel as nib
    import numpy as np

    broken = np.full((20, 20, 20), np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(broken, np.eye(4)), tmp_path / "broken.nii.gz")
    rows = list(csv.DictReader(demo_manifest.open()))
    sessions = {(r["subject"], r["session"]): r for r in rows}
    for row in rows:
        row["path"] = str((demo_manifest.parent / row["path"]).resolve())
    for row in sessions.values():
        rows.append(row | {"modality": "SWI", "path": str(tmp_path / "broken.nii.gz")})
    manifest = tmp_path / "with_bad.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"))
    data = datamodule(manifest)
    run = trainer(tmp_path, max_epochs=1, max_steps=-1, limit_val_batches=0)
    run.fit(module, datamodule=data)
    assert run.callback_metrics["data/skipped_scans"].item() == len(data.splits["train"])
    assert run.callback_metrics["data/skipped_sessions"].item() == 0


def test_compile_option_compiles_the_blocks_once_before_training(demo_manifest, tmp_path, monkeypatch):
    from brainfm_lightning.models.transformer import ConditionedTransformer

    calls = []
    original = ConditionedTransformer.compile_blocks

    def eager_compile(self, **options):  # the inductor backend takes minutes on 2 CPU cores
        calls.append(options)
        original(self, **options, backend="eager")

    monkeypatch.setattr(ConditionedTransformer, "compile_blocks", eager_compile)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1, compile="reduce-overhead")
    run = trainer(tmp_path, max_steps=1, limit_val_batches=1)
    run.fit(module, datamodule=datamodule(demo_manifest))
    run.validate(module, datamodule=datamodule(demo_manifest))
    assert calls == [{"mode": "reduce-overhead"}] * 2  # encoder and decoder, not again for validate
    assert all(block._compiled_call_impl is not None for block in module.net.encoder.blocks)

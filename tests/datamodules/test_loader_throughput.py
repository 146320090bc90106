"""The loader options that keep the model fed: device augmentation, workers that stay up, the cache on first use."""

from __future__ import annotations

import os
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from brainfm_lightning.data import dataset as dataset_module
from brainfm_lightning.data import pad_collate
from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules import MAEPretrainModule
from data_modules import DemoDataModule, ManifestDataModule
from data_modules import manifest as manifest_module
from data_modules.manifest import default_num_workers


def fake_trainer(training: bool, epoch: int = 0, ready: int = 0, rank: int = 0) -> SimpleNamespace:
    current = SimpleNamespace(ready=ready)
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=current)))
    return SimpleNamespace(training=training, current_epoch=epoch, fit_loop=loop, global_rank=rank, num_devices=1)


def batch_of(data: ManifestDataModule, count: int = 2) -> dict:
    dataset = data._dataset(data.splits["train"], train=True)
    return pad_collate([dataset[(0, index)] for index in range(count)])


@pytest.fixture
def labelled(demo_manifest) -> ManifestDataModule:
    return ManifestDataModule(str(demo_manifest), spacing=4.0,
                              crop_size=32, with_label=True, augment=True, num_workers=0,
                              val_fraction=0.0)


def test_device_augmentation_runs_in_training_only_and_moves_labels(labelled):
    batch = batch_of(labelled)
    labelled.trainer = fake_trainer(training=False)
    assert labelled.on_after_batch_transfer(batch, 0) is batch  # validation, test, predict: untouched
    labelled.trainer = fake_trainer(training=True)
    augmented = labelled.on_after_batch_transfer(dict(batch), 0)
    assert augmented["images"].shape == batch["images"].shape and augmented["label"].dtype == torch.uint8
    assert not torch.equal(augmented["images"], batch["images"])
    assert set(augmented["label"].unique().tolist()) <= set(batch["label"].unique().tolist())
    assert augmented["session_ids"] == batch["session_ids"] and torch.equal(augmented["present"], batch["present"])


def test_device_augmentation_is_seeded_by_the_training_position(labelled):
    batch = batch_of(labelled)

    def augmented(**position) -> torch.Tensor:
        labelled.trainer = fake_trainer(training=True, **position)
        return labelled.on_after_batch_transfer(dict(batch), 0)["images"]

    same = augmented(epoch=1, ready=3)
    assert torch.equal(same, augmented(epoch=1, ready=3))  # a resumed run draws what the uninterrupted one drew
    for other in (dict(epoch=1, ready=4), dict(epoch=2, ready=3), dict(epoch=1, ready=3, rank=1)):
        assert not torch.equal(same, augmented(**other))


def test_collate_augmentation_is_seeded_by_the_sample_keys(demo_manifest):
    data = ManifestDataModule(str(demo_manifest), spacing=4.0,
                              crop_size=32, with_label=True, augment=True, augment_on="collate",
                              num_workers=0, val_fraction=0.2)
    assert data.device_augmentation is None
    dataset = data._dataset(data.splits["train"], train=True)
    collate = data.train_dataloader().collate_fn
    samples = [dataset[(0, 0)], dataset[(0, 1)]]
    raw, first, again = pad_collate(samples), collate(samples), collate([dataset[(0, 0)], dataset[(0, 1)]])
    assert torch.equal(first["images"], again["images"]) and torch.equal(first["label"], again["label"])
    assert not torch.equal(first["images"], raw["images"])
    relabelled = [dict(sample, sample_key=(7, index)) for index, sample in enumerate(samples)]
    other = collate(relabelled)  # the same crops under other keys: other draws
    assert not torch.equal(other["images"], first["images"])
    assert data.val_dataloader().collate_fn is pad_collate  # never augmented outside training


def test_workers_augmentation_is_left_to_torchio(demo_manifest):
    data = ManifestDataModule(str(demo_manifest), spacing=4.0,
                              crop_size=32, augment=True, augment_on="workers", num_workers=0)
    assert data.device_augmentation is None and data._dataset(data.splits["train"], True).preprocessor.augmentation
    with pytest.raises(ValueError, match="augment_on"):
        ManifestDataModule(str(demo_manifest), spacing=4.0, augment=True, augment_on="gpu")


def test_fit_trains_on_augmented_batches(demo_manifest):
    """What ``training_step`` receives is the collated crops, augmented; the raw crops without augmentation."""
    seen = {}

    class Capture(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[batch_idx] = batch

    for augment in (False, True):
        data = ManifestDataModule(str(demo_manifest), spacing=4.0,
                                  crop_size=32, batch_size=2, augment=augment, num_workers=0,
                                  val_fraction=0.0)
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, callbacks=[Capture()])
        trainer.fit(MAEPretrainModule(ModalityMAE.from_preset("test")), datamodule=data)
        dataset = data._dataset(data.splits["train"], train=True)
        index = {s.session_id: i for i, s in enumerate(data.splits["train"])}
        raw = pad_collate([dataset[(0, index[name])] for name in seen[0]["session_ids"]])
        assert torch.equal(seen[0]["images"], raw["images"]) != augment


def test_default_workers_follow_the_cpus_and_stay_up(demo_manifest, monkeypatch):
    for cpus, ranks, expected in ((16, 1, 8), (16, 4, 3), (2, 1, 1), (1, 1, 0), (4, 8, 0)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, cpus=cpus: set(range(cpus)))
        assert default_num_workers(ranks) == expected
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    data = ManifestDataModule(str(demo_manifest), spacing=4.0, crop_size=32, prefetch_factor=3)
    loader = data.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, True, 3)
    assert not ManifestDataModule(str(demo_manifest), spacing=4.0,
                                  crop_size=32, num_workers=0).train_dataloader().persistent_workers
    with pytest.raises(ValueError, match="num_workers"):
        ManifestDataModule(str(demo_manifest), spacing=4.0, num_workers=-1)


def test_the_cache_is_prepared_on_first_use_and_read_after(demo_root, tmp_path, monkeypatch):
    def demo(**options) -> DemoDataModule:
        return DemoDataModule(root=str(demo_root), n_subjects=6, demo_spacing=4.0, crop_size=32, num_workers=0,
                              prepare_cache=True, cache_dir=str(tmp_path / "cache"), **options)

    first = demo()
    assert not any(first.cache.is_prepared(s) for s in first.sessions)
    first.prepare_data()
    assert all(first.cache.is_prepared(s) for s in first.sessions)

    second = demo()
    monkeypatch.setattr(manifest_module, "prepare_cache", None)  # nothing left to prepare: never called
    second.prepare_data()
    monkeypatch.setattr(dataset_module, "load_scan", None)  # crops come from the cache, no NIfTI file is opened
    batch = next(iter(second.train_dataloader()))
    assert batch["images"].shape[-3:] == (32, 32, 32)
    monkeypatch.undo()

    changed = demo(spacing=6.0)  # another setting: another cache folder, prepared anew
    assert changed.cache.folder != first.cache.folder
    changed.prepare_data()
    assert all(changed.cache.is_prepared(s) for s in changed.sessions)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([first.cache.folder.name,
                                                                             changed.cache.folder.name])


def test_demo_cache_defaults_next_to_the_dataset(demo_root):
    data = DemoDataModule(root=str(demo_root), n_subjects=6, demo_spacing=4.0, prepare_cache=True)
    assert data.cache_dir == str(demo_root.with_name(f"{demo_root.name}-prepared"))
    assert DemoDataModule(root=str(demo_root), n_subjects=6, demo_spacing=4.0).cache is None

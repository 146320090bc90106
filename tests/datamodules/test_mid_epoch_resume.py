"""A resume in the middle of an epoch continues with the sessions an uninterrupted run sees next."""

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules import MAEPretrainModule
from data_modules import ManifestDataModule


class SessionLog(L.Callback):
    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[(trainer.current_epoch, batch_idx)] = batch["session_ids"]


def fit(manifest, root, ckpt_path=None) -> SessionLog:
    torch.manual_seed(0)
    log = SessionLog()
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=2, save_top_k=-1,
                                  filename="step{step}", auto_insert_metric_name=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, callbacks=[log, checkpoints],
                        num_sanity_val_steps=0, limit_val_batches=0)
    data = ManifestDataModule(str(manifest), spacing=4.0, crop_size=32, batch_size=2, num_workers=0, val_fraction=0.0)
    trainer.fit(MAEPretrainModule(ModalityMAE.from_preset("test")), datamodule=data, ckpt_path=ckpt_path)
    return log


def test_mid_epoch_resume_keeps_the_data_order(demo_manifest, tmp_path):
    straight = fit(demo_manifest, tmp_path / "straight")  # 6 sessions, batches of 2: 3 steps per epoch
    resumed = fit(demo_manifest, tmp_path / "resumed", ckpt_path=tmp_path / "straight/checkpoints/step2.ckpt")
    assert min(resumed.seen) == (0, 2)  # the checkpoint was taken after two of the three batches of epoch 0
    assert resumed.seen == {key: value for key, value in straight.seen.items() if key >= (0, 2)}

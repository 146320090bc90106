"""A pretraining checkpoint shared by the transfer tests."""

import lightning as L
import pytest
import torch

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules import MAEPretrainModule
from data_modules import ManifestDataModule


@pytest.fixture(scope="session")
def pretrained(demo_manifest, tmp_path_factory):
    """A pretraining checkpoint of the test preset after one step, and its network."""
    root = tmp_path_factory.mktemp("transfer_pretrain")
    torch.manual_seed(0)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1)
    run = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
                    num_sanity_val_steps=0, limit_val_batches=0)
    run.fit(module, datamodule=ManifestDataModule(str(demo_manifest), crop_size=32, batch_size=2, num_workers=0))
    path = root / "pretrained.ckpt"
    run.save_checkpoint(path)
    return path, ModalityMAE.from_checkpoint(path)

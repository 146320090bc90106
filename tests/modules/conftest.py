"""A pretraining checkpoint shared by the transfer tests."""

import pytest
import torch
from trainers import cpu_trainer

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules import MAEPretrainModule
from data_modules import ManifestDataModule


@pytest.fixture(scope="session")
def pretrained(demo_manifest, tmp_path_factory):
    """A pretraining checkpoint of the test preset after one step, and its network."""
    root = tmp_path_factory.mktemp("transfer_pretrain")
    torch.manual_seed(0)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1)
    run = cpu_trainer(root, limit_val_batches=0)
    run.fit(module, datamodule=ManifestDataModule(str(demo_manifest), spacing=4.0,
                                                  crop_size=32, batch_size=2, num_workers=0))
    path = root / "pretrained.ckpt"
    run.save_checkpoint(path)
    return path, ModalityMAE.from_checkpoint(path)

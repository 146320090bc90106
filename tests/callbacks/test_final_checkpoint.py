"""FinalCheckpoint: last.ckpt holds the state fit ended with, not the last step the checkpoint cadence fell on."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from trainers import cpu_trainer

from brainfm_lightning.callbacks import FinalCheckpoint
from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules import MAEPretrainModule
from data_modules import ManifestDataModule


@pytest.mark.parametrize("with_final", [False, True])
def test_last_checkpoint_is_the_final_step(demo_manifest, tmp_path, with_final):
    every_4 = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=4)
    callbacks = [every_4, FinalCheckpoint()] if with_final else [every_4]
    trainer = cpu_trainer(tmp_path, max_steps=6, limit_val_batches=0, enable_checkpointing=True, callbacks=callbacks)
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1)
    trainer.fit(module, datamodule=ManifestDataModule(str(demo_manifest), spacing=4.0,
                                                      crop_size=32, batch_size=1, num_workers=0))
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == (6 if with_final else 4)  # Lightning alone keeps step 4
    if with_final:
        assert all(torch.equal(last["state_dict"][f"net.{k}"], v) for k, v in module.net.state_dict().items())

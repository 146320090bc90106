"""configs/logger/wandb.yaml: an offline W&B run holds the resolved config, the loss curves and the montage."""

import time

import wandb
from conftest import CONFIGS, tiny_fit_args

from brainfm_lightning.cli import main


def test_offline_wandb_run_has_config_losses_and_montage(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # wandb's own cache/config files stay in the temp folder too
    args = tiny_fit_args(demo_root, "--config", str(CONFIGS / "logger/wandb.yaml"),
                         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                         "--trainer.default_root_dir", str(tmp_path / "runs"),
                         "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
                         "--trainer.check_val_every_n_epoch", "1",
                         "--trainer.enable_progress_bar", "false")
    try:
        assert main(args) == 0
    finally:
        wandb.finish()  # what the end of the `brainfm` process does; flushes the offline run

    (run,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    (record_file,) = run.glob("run-*.wandb")
    # the resolved config: defaults, class paths, the callbacks list and the command-line overrides
    keys = [b"seed_everything", b"mask_ratio", b"decoder_embed_dim", b"VICRegWarmup", b"ReconstructionMontage",
            b"demo_spacing", str(demo_root).encode()]
    # the history: losses of both loops and the collapse metrics of the montage callback
    keys += [b"train/loss_mae", b"train/loss_var", b"train/loss_cov", b"val/loss_mae", b"val/feature_std",
             b"val/feature_effective_rank", b"val/reconstruction"]
    records = wait_for(record_file, keys)
    for key in keys:
        assert key in records, key
    images = sorted((run / "files" / "media" / "images").rglob("*.png"))
    assert images, f"no PNG under {run / 'files/media/images'}"
    assert images[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same montage on disk, in the run's folder next to its checkpoints
    run_id = run.name.rsplit("-", 1)[-1]
    montages = sorted((tmp_path / "runs" / "brainfm" / run_id / "montages").glob("reconstruction-step*.png"))
    assert [m.name for m in montages] == ["reconstruction-step0000002.png"]


def wait_for(path, keys: list[bytes], seconds: float = 60.0) -> bytes:
    """The file's bytes once they hold every key, or as they are after ``seconds``: wandb's service process
    writes the offline run file on its own schedule, which lags behind ``wandb.finish()`` on a busy machine."""
    deadline = time.monotonic() + seconds
    while True:
        records = path.read_bytes()
        if all(key in records for key in keys) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)

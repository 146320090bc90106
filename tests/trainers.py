"""A quiet one-device CPU Trainer for module tests."""

import lightning as L


def cpu_trainer(root, **overrides) -> L.Trainer:
    """One step, no logger, checkpoints, progress bar or sanity validation unless ``overrides`` say otherwise."""
    options = dict(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
                   num_sanity_val_steps=0)
    return L.Trainer(**(options | overrides))

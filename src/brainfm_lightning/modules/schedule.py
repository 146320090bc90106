"""Learning-rate schedule: linear warm-up then cosine decay, per optimizer step."""

from __future__ import annotations

import math

import lightning as L
import torch


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR that rises linearly for ``warmup_steps`` and then follows a half cosine to ``min_lr_ratio``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norm parameters, positional embeddings and mask tokens (as in MAE)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_exempt = param.ndim <= 1 or name.endswith(("pos_embed", "mask_token")) or "to_scale_shift" in name
        (no_decay if is_exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def stepping_batches(trainer: L.Trainer) -> int:
    """Optimizer steps of the whole fit, as ``trainer.estimated_stepping_batches``, and at least 1.

    Asked inside ``configure_optimizers`` of a resumed fit, Lightning's property builds the training loader and its
    iterator before the checkpoint is restored; Lightning then never loads the loader's saved position, and the
    resumed run reads other batches than the interrupted one would have. When resuming with a datamodule, the
    count is taken from a loader built for it alone (no iterator, no workers) instead.

    Args:
        trainer: The trainer, inside ``configure_optimizers``.

    Returns:
        The number of optimizer steps the schedule spans.
    """
    datamodule = getattr(trainer, "datamodule", None)
    if trainer.ckpt_path is None or trainer.train_dataloader is not None or datamodule is None \
            or trainer.max_epochs == -1:
        return max(1, int(trainer.estimated_stepping_batches))
    batches = len(datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
    return max(1, min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps)

"""Learning-rate schedule: linear warm-up then cosine decay, per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import lightning as L
import torch


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0,
    delays: Sequence[int] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR that rises linearly for ``warmup_steps`` and then follows a half cosine to ``min_lr_ratio``.

    With ``delays``, group ``g``'s rate is zero for its first ``delays[g]`` steps and then rises linearly over
    ``max(1, warmup_steps)`` steps to the common schedule (a head trained alone before the encoder joins).

    Args:
        optimizer: The optimizer whose learning rates are scaled.
        total_steps: Optimizer steps of the whole fit.
        warmup_steps: Steps of the linear warm-up (see :func:`warmup_steps` for fractions).
        min_lr_ratio: The final learning rate as a fraction of the peak.
        delays: Steps each parameter group waits at a zero rate (one per group; ``None``: no group waits).

    Returns:
        The scheduler, to be stepped once per optimizer step.

    Raises:
        ValueError: ``total_steps`` < 1, or ``delays`` not one non-negative count per group.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    if delays is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if len(delays) != len(optimizer.param_groups) or min(delays, default=0) < 0:
        raise ValueError(f"delays must give a step count >= 0 for each of the {len(optimizer.param_groups)} "
                         f"parameter groups, got {list(delays)}")
    ramp = max(1, warmup_steps)

    def delayed(delay: int) -> Callable[[int], float]:
        if delay == 0:
            return factor
        return lambda step: 0.0 if step < delay else min(1.0, (step - delay + 1) / ramp) * factor(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [delayed(d) for d in delays])


def warmup_steps(value: float, total: int) -> int:
    """The warm-up length in optimizer steps: ``value`` steps when ``value >= 1``, else ``floor(value * total)``.

    Args:
        value: A step count (>= 1) or a fraction of all steps (< 1), as the modules' ``warmup_steps`` argument.
        total: Optimizer steps of the whole fit.

    Returns:
        The number of warm-up steps.

    Raises:
        ValueError: ``value`` is negative.
    """
    if value < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {value}")
    if value >= 1:
        return int(value)
    # 1e-9: the fraction as written, not its binary value (0.29 * 100 is 28.999999999999996 in float64)
    return math.floor(float(value) * total + 1e-9)


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Whether a parameter is exempt from weight decay, as in MAE.

    Exempt are biases and norm parameters (at most one dimension), positional embeddings, mask tokens and the
    conditional LayerNorm's scale/shift maps.

    Args:
        name: The parameter's name in its module (``named_parameters``).
        param: The parameter.

    Returns:
        ``True`` when it gets no weight decay.
    """
    return param.ndim <= 1 or name.endswith(("pos_embed", "mask_token")) or "to_scale_shift" in name


def parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters of ``module`` in two groups: with ``weight_decay`` and without (:func:`no_decay`).

    Args:
        module: The module whose parameters the optimizer updates.
        weight_decay: Weight decay of the first group.

    Returns:
        ``[{"params": ..., "weight_decay": weight_decay}, {"params": ..., "weight_decay": 0.0}]``.
    """
    decayed, exempt = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (exempt if no_decay(name, param) else decayed).append(param)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


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

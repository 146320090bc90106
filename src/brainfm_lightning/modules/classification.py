"""LightningModule for session-level classification or regression on pooled ModalityMAE encoder tokens."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from brainfm_lightning.evaluation.metrics import Task, classification_metric_collection
from brainfm_lightning.models import ClassificationHead, ModalityMAE
from brainfm_lightning.modules.modality_embedding import injected_hparams_to_ignore
from brainfm_lightning.modules.transfer import TransferModule, check_optimization

_TRUE, _FALSE = ("1", "1.0", "true", "yes", "y", "t"), ("0", "0.0", "false", "no", "n", "f")


def parse_targets(targets: Sequence[Mapping[str, str]], column: str, task: Task, num_classes: int,
                  session_ids: Sequence[str]) -> torch.Tensor:
    """Targets of a batch from its per-session manifest columns.

    Args:
        targets: One dict of column -> string per session (``batch["targets"]``).
        column: The manifest column to read.
        task: ``binary`` (``0/1``, ``true/false``, ``yes/no``), ``multiclass`` (``0 .. num_classes - 1``) or
            ``regression`` (any float).
        num_classes: Classes of a multiclass task.
        session_ids: Named in error messages.

    Returns:
        float ``[B]`` (binary, regression) or long ``[B]`` (multiclass).

    Raises:
        ValueError: A session lacks the column or holds a value the task cannot read (session and value named).
    """
    values: list[float] = []
    for row, session in zip(targets, session_ids, strict=True):
        if column not in row:
            raise ValueError(f"session {session} has no target column {column!r} (model.target); "
                             f"its manifest columns: {sorted(row)}")
        text = str(row[column]).strip()
        try:
            if task == "binary":
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError
                values.append(float(text.lower() in _TRUE))
            elif task == "multiclass":
                values.append(float(int(text)))
                if not 0 <= values[-1] < num_classes:
                    raise ValueError
            else:
                values.append(float(text))
        except ValueError:
            raise ValueError(f"session {session}: target {column}={text!r} is not a valid {task} value"
                             + (f" in [0, {num_classes})" if task == "multiclass" else "")) from None
    result = torch.tensor(values)
    return result.long() if task == "multiclass" else result


class ClassificationModule(TransferModule):
    """Predicts a per-session manifest column from the mean of the encoder's valid tokens (any modality subset).

    ``freeze_encoder=True`` with a linear :class:`ClassificationHead` is a linear probe; ``hidden_features > 0``
    makes it a shallow MLP; with ``freeze_encoder=False`` the whole encoder is fine-tuned (optionally with
    layer-wise lr decay). Logs accuracy and AUC (``binary``, ``multiclass``) or MAE and R2 (``regression``) per epoch.

    Args:
        net: The encoder's network; its reconstruction decoder is kept but frozen and unused.
        head: Builds the head as ``head(embed_dim, outputs)`` with ``outputs`` = ``num_classes`` (multiclass) or 1:
            :class:`ClassificationHead` or a partial of it; in a config its ``class_path`` with every ``init_args``
            but those two (``hidden_features``, ``dropout``).
        pretrained: A pretraining checkpoint whose ``net.*`` weights and modality table are loaded (see
            :class:`~brainfm_lightning.modules.SegmentationModule`).
        allow_partial: Keep encoder weights that do not fit at initialisation instead of raising (see
            :class:`~brainfm_lightning.modules.SegmentationModule`).
        target: Manifest column to predict (``has_lesion``, ``lesion_volume_ml`` on the demo data).
        task: ``binary``, ``multiclass`` or ``regression``.
        num_classes: Classes of a multiclass task.
        freeze_encoder: Train the head only.
        layer_decay: Layer-wise lr decay of the encoder (1: none).
        optimizer: Optimizer factory; receives parameter groups.
        weight_decay: Weight decay of weights (not biases, norms, embeddings).
        warmup_steps: Learning-rate warm-up, in steps (>= 1) or as a fraction of all steps (< 1).
        min_lr_ratio: Final learning rate of the cosine schedule over the peak.
        head_only_steps: Steps (>= 1) or fraction of all steps (< 1) during which only the head learns: the
            encoder's learning rate is zero, then rises over the warm-up length to the common schedule (linear
            probing then fine-tuning, so a random head does not first pull the pretrained features apart).
        text_encoder: Embeds modality names absent from the table.
        modality_table: Optional precomputed table to start from.
        descriptions: Extra modality name -> text to embed.
        aliases: Extra alias -> canonical modality name.
    """

    def __init__(
        self,
        net: ModalityMAE,
        head: Callable[[int, int], nn.Module] = ClassificationHead,
        pretrained: str | None = None,
        allow_partial: bool = False,
        target: str = "has_lesion",
        task: Task = "binary",
        num_classes: int = 2,
        freeze_encoder: bool = False,
        layer_decay: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        weight_decay: float = 0.05,
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.0,
        head_only_steps: float = 0.0,
        text_encoder: str = "minilm",
        modality_table: str | None = None,
        descriptions: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if task not in ("binary", "multiclass", "regression"):
            raise ValueError(f"task must be 'binary', 'multiclass' or 'regression', got {task!r}")
        if task == "multiclass" and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for a multiclass task, got {num_classes}")
        check_optimization(weight_decay, layer_decay, warmup_steps, head_only_steps)
        self.save_hyperparameters(ignore=injected_hparams_to_ignore())
        self.net = net
        self.head = head(net.config["embed_dim"], num_classes if task == "multiclass" else 1)
        self.optimizer_factory: Callable = optimizer
        self._init_transfer(pretrained, "full" if freeze_encoder else "none", text_encoder, modality_table,
                            descriptions, aliases, allow_partial)
        self.val_metrics = classification_metric_collection(task, num_classes, prefix="val/")
        self.test_metrics = classification_metric_collection(task, num_classes, prefix="test/")

    def forward(self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
                head_offset: torch.Tensor | None = None) -> torch.Tensor:
        """Head outputs ``[B, 1]`` (binary logit, regression value) or ``[B, num_classes]`` (logits)."""
        return self.head(self.net.encode_pooled(images, modality_embeddings, present, head_offset))

    def _outputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, scores, targets)``: scores are probabilities (classification) or values (regression)."""
        hp = self.hparams
        outputs = self(batch["images"], self.embed_batch(batch), batch["present"], batch.get("head_offset"))
        targets = parse_targets(batch["targets"], hp.target, hp.task, hp.num_classes, batch["session_ids"])
        targets = targets.to(outputs.device)
        if hp.task == "multiclass":
            return F.cross_entropy(outputs, targets), outputs.softmax(-1), targets
        outputs = outputs.squeeze(-1)
        if hp.task == "binary":
            return F.binary_cross_entropy_with_logits(outputs, targets), outputs.sigmoid(), targets.long()
        return F.mse_loss(outputs, targets), outputs, targets

    @override
    def training_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor:
        if batch is None:  # every session was bad input; Lightning's loop skips such batches before this
            return self.skipped_step_loss()
        loss, _, _ = self._outputs(batch)
        self.log_training_loss(loss, len(batch["session_ids"]))
        return loss

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> None:
        loss, scores, targets = self._outputs(batch)
        batch_size = len(batch["session_ids"])
        self.log(f"{stage}/loss", loss, batch_size=batch_size, sync_dist=True)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(scores.detach(), targets)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=batch_size)

    @override
    def validation_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluate(batch, "val")

    @override
    def test_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluate(batch, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Per-session scores: probabilities (classification) or predicted values (regression)."""
        outputs = self(batch["images"], self.embed_batch(batch), batch["present"], batch.get("head_offset"))
        if self.hparams.task == "multiclass":
            scores = outputs.softmax(-1)
        else:
            scores = outputs.squeeze(-1).sigmoid() if self.hparams.task == "binary" else outputs.squeeze(-1)
        return {"session_ids": batch["session_ids"], "modalities": batch["modalities"], "scores": scores}

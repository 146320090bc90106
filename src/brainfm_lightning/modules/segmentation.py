"""LightningModule for segmentation: a (pretrained) ModalityMAE encoder under a UNETR decoder, any modality subset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from torch import nn
from torchmetrics import MeanMetric

from brainfm_lightning.evaluation import SEGMENTATION_METRICS, segmentation_metrics, segmentation_rows
from brainfm_lightning.evaluation.lesions import lesion_metrics
from brainfm_lightning.evaluation.metrics import write_metrics_csv
from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.models.seg_head import ModalityUNETR
from brainfm_lightning.modules.modality_embedding import injected_hparams_to_ignore
from brainfm_lightning.modules.transfer import FreezeMode, TransferModule, check_optimization


class SegmentationModule(TransferModule):
    """Voxel-wise segmentation from every available modality of a session (:class:`ModalityUNETR`), DiceCE loss.

    Validation and test run MONAI's sliding-window inference when volumes are larger than the network's crop, and
    log the NaN-aware means of per-case Dice, HD95 (mm), sensitivity and specificity
    (:func:`~brainfm_lightning.evaluation.segmentation_metrics`); ``test`` also writes them per case to
    ``test_metrics.csv`` in the log folder.

    Args:
        net: The encoder's network; its reconstruction decoder is kept (checkpoint layout) but frozen and unused.
        pretrained: A pretraining checkpoint: its ``net.*`` weights and modality table are loaded and a report is
            logged. An encoder weight missing from it, unknown to the network or of another shape raises, naming
            the keys; positional embeddings of another crop are interpolated to ``net``'s grid. Restoring a
            fine-tuned checkpoint in Python needs no pretraining file:
            ``SegmentationModule.load_from_checkpoint(path, net=..., pretrained=None)``.
        allow_partial: Load what fits and keep the other encoder weights at initialisation (listed in the report)
            instead of raising; the explicit way to fine-tune from a checkpoint of another architecture.
        num_classes: Classes including background.
        freeze_encoder: ``none`` (full fine-tune), ``partial`` (embeddings and the first half of the blocks) or
            ``full`` (decoder only).
        layer_decay: Layer-wise lr decay of the encoder (1: none; BEiT/MAE use 0.65-0.75).
        feature_size: Decoder channels at full resolution.
        feature_layers: Encoder depths of the UNETR skips (default evenly spaced).
        optimizer: Optimizer factory; receives parameter groups.
        weight_decay: Weight decay of weights (not biases, norms, embeddings).
        warmup_steps: Learning-rate warm-up, in steps (>= 1) or as a fraction of all steps (< 1).
        min_lr_ratio: Final learning rate of the cosine schedule over the peak.
        voxel_spacing: Spacing in mm for HD95; ``None`` takes the datamodule's ``spacing`` (or 1, in voxels).
        sw_batch_size: Windows per forward pass of sliding-window inference.
        sw_overlap: Overlap of the sliding windows.
        text_encoder: Embeds modality names absent from the table (``minilm``, ``biobert`` or a folder).
        modality_table: Optional precomputed table to start from.
        descriptions: Extra modality name -> text to embed.
        aliases: Extra alias -> canonical modality name.
    """

    def __init__(
        self,
        net: ModalityMAE,
        pretrained: str | None = None,
        allow_partial: bool = False,
        num_classes: int = 2,
        freeze_encoder: FreezeMode = "none",
        layer_decay: float = 1.0,
        feature_size: int = 16,
        feature_layers: Sequence[int] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        weight_decay: float = 0.05,
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.0,
        voxel_spacing: float | Sequence[float] | None = None,
        sw_batch_size: int = 2,
        sw_overlap: float = 0.25,
        text_encoder: str = "minilm",
        modality_table: str | None = None,
        descriptions: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and one class), got {num_classes}")
        check_optimization(weight_decay, layer_decay, warmup_steps)
        self.save_hyperparameters(ignore=injected_hparams_to_ignore())
        self.segmenter = ModalityUNETR(net, num_classes, feature_size, feature_layers)
        self.optimizer_factory: Callable = optimizer
        self._init_transfer(pretrained, freeze_encoder, text_encoder, modality_table, descriptions, aliases,
                            allow_partial)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.spacing: float | Sequence[float] = voxel_spacing or 1.0
        self.metric_means = nn.ModuleDict({f"{stage}_{name}": MeanMetric(nan_strategy="ignore")
                                           for stage in ("val", "test") for name in SEGMENTATION_METRICS})
        self._test_rows: list[dict[str, object]] = []

    @property
    def net(self) -> ModalityMAE:  # type: ignore[override]
        """The encoder's :class:`ModalityMAE` (``segmenter.net``)."""
        return self.segmenter.net

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.hparams.voxel_spacing is None:
            spacing = getattr(datamodule, "spacing", None)
            if spacing is None and stage != "predict":
                rank_zero_warn("HD95 is in voxels: set data.spacing or model.voxel_spacing to report millimetres")
            self.spacing = spacing or 1.0

    def forward(self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, *img_size]`` of crops ``images`` ``[B, M, *img_size]``."""
        return self.segmenter(images, modality_embeddings, present)

    def predict_logits(
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """Logits of volumes of any size: one pass for a crop, MONAI sliding windows (Gaussian blend) otherwise."""
        if tuple(images.shape[2:]) == tuple(self.net.img_size):
            return self(images, modality_embeddings, present)
        rows = []
        for i in range(images.shape[0]):  # windows of one session share its embeddings and present slots

            def predictor(window: torch.Tensor, row: int = i) -> torch.Tensor:
                n = window.shape[0]
                return self(window, modality_embeddings[row:row + 1].expand(n, -1, -1),
                            present[row:row + 1].expand(n, -1))

            rows.append(sliding_window_inference(images[i:i + 1], self.net.img_size, self.hparams.sw_batch_size,
                                                 predictor, overlap=self.hparams.sw_overlap, mode="gaussian"))
        return torch.cat(rows)

    def _label(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if "label" not in batch:
            raise ValueError("segmentation batches need a 'label' mask: set data.with_label: true")
        label = batch["label"].long()
        if label.max() >= self.hparams.num_classes:
            raise ValueError(f"label value {int(label.max())} in sessions {batch['session_ids']} is not below "
                             f"model.num_classes={self.hparams.num_classes}")
        return label

    def training_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor:
        if batch is None:  # every session was bad input; Lightning's loop skips such batches before this
            return self.skipped_step_loss()
        logits = self(batch["images"], self.embed_batch(batch), batch["present"])
        loss = self.loss(logits, self._label(batch))
        self.log_training_loss(loss, len(batch["session_ids"]))
        return loss

    def _evaluate(
        self, batch: Mapping[str, Any], stage: str
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Log the stage's loss and metrics; returns the per-case metrics, the predicted and the true label maps."""
        label = self._label(batch)
        logits = self.predict_logits(batch["images"], self.embed_batch(batch), batch["present"])
        batch_size = len(batch["session_ids"])
        self.log(f"{stage}/loss", self.loss(logits, label), batch_size=batch_size, sync_dist=True)
        prediction = logits.argmax(1, keepdim=True)
        metrics = segmentation_metrics(prediction, label, self.hparams.num_classes, self.spacing)
        for name, values in metrics.items():
            mean = self.metric_means[f"{stage}_{name}"]
            mean.update(values.nanmean(dim=1).to(self.device))  # per case, over foreground classes
            self.log(f"{stage}/{name}", mean, on_step=False, on_epoch=True, batch_size=batch_size)
        return metrics, prediction, label

    def validation_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        if batch is None:
            return
        metrics, prediction, label = self._evaluate(batch, "test")
        rows = segmentation_rows(batch["session_ids"], metrics)
        for row, predicted, truth in zip(rows, prediction.cpu().numpy(), label.cpu().numpy(), strict=True):
            row.update(lesion_metrics(predicted[0], truth[0], self.spacing))  # foreground: any label above 0
        self._test_rows += rows

    def on_test_epoch_end(self) -> None:
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        if self._test_rows and log_dir:  # per rank under DDP: test on one device for a complete table
            suffix = f"_rank{self.global_rank}" if self.trainer.world_size > 1 else ""
            write_metrics_csv(self._test_rows, Path(log_dir) / f"test_metrics{suffix}.csv")
        self._test_rows = []

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Label maps uint8 ``[B, 1, D, H, W]`` of the batch's sessions."""
        logits = self.predict_logits(batch["images"], self.embed_batch(batch), batch["present"])
        return {"session_ids": batch["session_ids"], "modalities": batch["modalities"],
                "prediction": logits.argmax(1, keepdim=True).to(torch.uint8)}

"""What every segmenter shares: DiceCE training, whole-volume evaluation, ``test_metrics.csv`` and predictions."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from monai.inferers import sliding_window_inference
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from brainfm_lightning.callbacks.prediction_writer import SegmentationWriter
from brainfm_lightning.data.preprocess import centred_start
from brainfm_lightning.evaluation import SEGMENTATION_METRICS, segmentation_metrics, segmentation_rows
from brainfm_lightning.evaluation.lesions import lesion_metrics
from brainfm_lightning.evaluation.metrics import write_metrics_csv
from brainfm_lightning.evaluation.native import native_case_metrics
from brainfm_lightning.modules.skipping import SkippedBatchMixin


def sliding_window_logits(
    images: torch.Tensor,
    predictor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    roi_size: Sequence[int],
    sw_batch_size: int = 2,
    overlap: float = 0.25,
    stitch_device: torch.device | str | None = "cpu",
    lattice: Sequence[int] | None = None,
    phase: Sequence[float] | None = None,
) -> torch.Tensor:
    """MONAI sliding windows with a Gaussian blend over a volume of any size (padded where smaller than a window).

    Windows run where ``images`` lie; the blended output is accumulated on ``stitch_device`` (the CPU by default,
    so a 1 mm whole head does not hold its full-size logits and weight maps on the accelerator).

    With ``lattice`` (a patch size), every window lies a whole number of patches from the volume's centred crop, as
    the training crops of ``crop_step`` = patch size do (README, "Positions"), so each window is one that training
    draws (:func:`~brainfm_lightning.data.preprocess.crop_start`), at the same sub-voxel place: the volume is padded
    (with each scan's minimum, as crops are padded) so that it is, and the step between windows is
    ``roi * (1 - overlap)`` rounded down to whole patches (at least one).

    Args:
        images: ``[B, C, *S]``.
        predictor: Logits ``[n, K, *roi_size]`` of a batch of windows ``[n, C, *roi_size]`` and their places
            ``[n, 3]`` (each window's centre minus the volume's centre, in voxels: what a network with positions in
            head coordinates adds to the volume's own ``head_offset``).
        roi_size: Window size (the network's crop).
        sw_batch_size: Windows per call of ``predictor``.
        overlap: Fraction by which neighbouring windows overlap.
        stitch_device: Where the output is accumulated; ``None``: the device of ``images``.
        lattice: Patch size per axis to align the windows to; ``None``: MONAI's placement.
        phase: The volume's own offset from the head's centre in voxels (its ``head_offset``), so that
            ``phase + place`` is on the lattice; ``None``: zero.

    Returns:
        Logits ``[B, K, *S]`` on ``stitch_device``.
    """
    roi = torch.tensor(roi_size, dtype=torch.float32)
    size = list(images.shape[2:])
    before = [0] * len(size)
    padded = [max(n, r) for n, r in zip(size, roi_size, strict=True)]  # MONAI pads evenly up to a window
    overlaps: float | list[float] = overlap
    if lattice is not None:
        phase = [0.0] * len(size) if phase is None else [float(p) for p in phase]
        overlaps = []
        for axis, (n, r, step) in enumerate(zip(size, roi_size, lattice, strict=True)):
            # windows start a whole number of patches from the centred training crop's start (shifted by the
            # volume's own offset from the head), so each one is a crop that training on the lattice draws
            before[axis] = (round(phase[axis]) - centred_start(n, r)) % step
            padded[axis] = r + step * math.ceil(max(n + before[axis] - r, 0) / step)
            interval = max(step, int(r * (1 - overlap)) // step * step)
            overlaps.append(1.0 - (interval + 0.5) / r)  # int(r * (1 - o)) == interval, whatever the rounding
        # padded with each scan's minimum, the region outside the head, as the data pads its crops
        fill = images.flatten(2).amin(2)[(..., *[None] * len(size))]
        canvas = fill.expand(*images.shape[:2], *padded).clone()
        canvas[(..., *(slice(b, b + n) for b, n in zip(before, size, strict=True)))] = images
        images = canvas
    # a place is the window's centre minus the volume's centre, in the coordinates of MONAI's slices
    centre = torch.tensor(padded, dtype=torch.float32) / 2 if lattice is None else \
        torch.tensor(before, dtype=torch.float32) + torch.tensor(size, dtype=torch.float32) / 2

    def placed(windows: torch.Tensor, slices: Sequence[Sequence[slice]]) -> torch.Tensor:
        # slices: [batch, channel, *spatial] of MONAI's (evenly padded, where smaller than a window) volume
        starts = torch.tensor([[s.start for s in window[2:]] for window in slices], dtype=torch.float32)
        return predictor(windows, (starts + roi / 2 - centre).to(windows.device))

    logits = sliding_window_inference(images, tuple(roi_size), sw_batch_size, placed, overlap=overlaps,
                                      mode="gaussian", sw_device=images.device,
                                      device=images.device if stitch_device is None else stitch_device,
                                      with_coord=True)
    if lattice is None:
        return logits
    return logits[(..., *(slice(b, b + n) for b, n in zip(before, size, strict=True)))]


def flip_averaged_probabilities(
    logits_of: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], images: torch.Tensor,
    flip_axes: Sequence[int] = (), head_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flip test-time augmentation: softmax averaged over the plain and the mirrored passes.

    Args:
        logits_of: Logits ``[B, K, *S]`` of volumes ``[B, C, *S]`` and their ``head_offset`` (``[B, 3]`` or None).
        images: ``[B, C, *S]``.
        flip_axes: Spatial axes (0, 1, 2 of ``*S``) along each of which ``images`` is also mirrored, predicted and
            mirrored back.
        head_offset: ``[B, 3]``: each volume's centre minus its head's centre, in voxels; negated along the
            mirrored axis for the mirrored pass. ``None``: volumes centred on the head.

    Raises:
        ValueError: An axis that is not 0, 1 or 2.

    Returns:
        float32 probabilities ``[B, K, *S]`` on the device ``logits_of`` returns.
    """
    for axis in flip_axes:
        if axis not in (0, 1, 2):
            raise ValueError(f"test-time flip axes are spatial axes 0, 1 or 2, got {axis}")
    total = logits_of(images, head_offset).float().softmax(1)
    for axis in flip_axes:
        dims = [2 + axis]
        mirrored = None
        if head_offset is not None:
            mirrored = head_offset.clone()
            mirrored[:, axis] = -mirrored[:, axis]
        total = total + logits_of(images.flip(dims), mirrored).float().softmax(1).flip(dims).to(total.device)
    return total / (1 + len(flip_axes))


class SegmenterBase(SkippedBatchMixin):
    """The loops of a segmenter, whatever its network: subclasses give the logits, this class does the rest.

    Training takes the DiceCE loss (or whatever ``self.loss`` is) of crops. Validation, test and predict see each
    session's whole volume (the datamodule serves them whole when the model asks, :attr:`whole_volume_inference`)
    through MONAI sliding windows with a Gaussian blend, stitched on the CPU. Validation logs the NaN-aware means of
    per-case Dice, HD95 (mm), sensitivity and specificity (:func:`~brainfm_lightning.evaluation.segmentation_metrics`)
    on the preprocessing grid. ``test`` scores each case in its native space, against its original mask file
    (:func:`~brainfm_lightning.evaluation.native.native_case_metrics`), adds lesion-wise detection and volumes, and
    writes one row per case plus the aggregate to ``test_metrics.csv`` in the log folder (complete on rank 0 under
    DDP). ``predict`` returns label maps with their geometry; :class:`~brainfm_lightning.callbacks.SegmentationWriter`
    (added when the trainer has none) writes them as NIfTI masks on each session's reference scan under
    ``<default_root_dir>/predictions``. Checkpoints record the data's spacing and crop (:func:`record_preprocessing`).

    Subclasses call ``super().__init__(num_classes, voxel_spacing)``, set ``self.loss`` and implement ``forward``
    (logits of crops), :meth:`predict_logits` (logits of volumes of any size) and ``embed_batch`` (what ``forward``
    takes for a batch's modality names; ``TransferModule`` has one); their
    hyperparameters hold ``voxel_spacing``, ``sw_batch_size`` and ``sw_overlap``.

    Args:
        num_classes: Classes including background.
        voxel_spacing: Spacing in mm for HD95; ``None`` takes the datamodule's ``spacing`` (or 1, in voxels).
    """

    whole_volume_inference = True  # asks the datamodule for whole volumes at validation, test and predict
    loss: nn.Module

    def __init__(self, num_classes: int, voxel_spacing: float | Sequence[float] | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and one class), got {num_classes}")
        self.num_classes = num_classes
        self.spacing: float | Sequence[float] = voxel_spacing or 1.0
        self.metric_means = nn.ModuleDict({f"{stage}_{name}": MeanMetric(nan_strategy="ignore")
                                           for stage in ("val", "test") for name in SEGMENTATION_METRICS})
        self._test_rows: list[dict[str, object]] = []
        self.return_probabilities = False  # set by SegmentationWriter(probabilities=True)

    def predict_logits(
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
        head_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, num_classes, *S]`` of volumes ``[B, M, *S]`` of any size.

        ``head_offset`` ``[B, 3]``: each volume's centre minus its head's centre, in voxels (a batch's
        ``head_offset``; ``None``: centred).
        """
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Take the datamodule's spacing for HD95 unless ``voxel_spacing`` is set."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.hparams.voxel_spacing is None:
            spacing = getattr(datamodule, "spacing", None)
            if spacing is None and stage != "predict":
                rank_zero_warn("HD95 is in voxels: set data.spacing or model.voxel_spacing to report millimetres")
            self.spacing = spacing or 1.0

    def _sliding_window(self, images: torch.Tensor, predictor: Callable, roi_size: Sequence[int],
                        lattice: Sequence[int] | None = None, phase: Sequence[float] | None = None) -> torch.Tensor:
        hp = self.hparams
        stitch = "cpu" if hp.get("sw_stitch_on_cpu", True) else None
        return sliding_window_logits(images, predictor, roi_size, hp.sw_batch_size, hp.sw_overlap, stitch,
                                     lattice, phase)

    def predict_probabilities(
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
        flip_axes: Sequence[int] = (), head_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Softmax ``[B, num_classes, *S]`` of :meth:`predict_logits`, with :func:`flip_averaged_probabilities`."""
        def logits_of(volume: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
            return self.predict_logits(volume, modality_embeddings, present, offset)

        return flip_averaged_probabilities(logits_of, images, flip_axes, head_offset)

    def _label(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if "label" not in batch:
            raise ValueError("segmentation batches need a 'label' mask: set data.with_label: true")
        label = batch["label"].long()
        if label.max() >= self.num_classes:
            raise ValueError(f"label value {int(label.max())} in sessions {batch['session_ids']} is not below "
                             f"the model's num_classes={self.num_classes}")
        return label

    @override
    def training_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor:
        if batch is None:  # every session was bad input; Lightning's loop skips such batches before this
            return self.skipped_step_loss()
        logits = self(batch["images"], self.embed_batch(batch), batch["present"], batch.get("head_offset"))
        loss = self.loss(logits, self._label(batch))
        self.log_training_loss(loss, len(batch["session_ids"]))
        return loss

    def _logits_and_loss(self, batch: Mapping[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the batch's volumes and the true label maps; logs the stage's loss."""
        label = self._label(batch)
        logits = self.predict_logits(batch["images"], self.embed_batch(batch), batch["present"],
                                     batch.get("head_offset"))
        label = label.to(logits.device)
        self.log(f"{stage}/loss", self.loss(logits, label), batch_size=len(batch["session_ids"]), sync_dist=True)
        return logits, label

    def _log_metrics(self, metrics: Mapping[str, torch.Tensor], stage: str, batch_size: int) -> None:
        for name, values in metrics.items():
            mean = self.metric_means[f"{stage}_{name}"]
            mean.update(values.nanmean(dim=1).to(self.device))  # per case, over foreground classes
            self.log(f"{stage}/{name}", mean, on_step=False, on_epoch=True, batch_size=batch_size)

    def _evaluate(
        self, batch: Mapping[str, Any], stage: str
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Log the stage's loss and metrics; returns the per-case metrics, the predicted and the true label maps."""
        logits, label = self._logits_and_loss(batch, stage)
        prediction = logits.argmax(1, keepdim=True)
        metrics = segmentation_metrics(prediction, label, self.num_classes, self.spacing)
        self._log_metrics(metrics, stage, len(batch["session_ids"]))
        return metrics, prediction, label

    @override
    def validation_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        """Per-case metrics: in native space against the mask files for whole volumes, on the crop otherwise."""
        if batch is None:
            return
        if batch.get("label_paths") is None:  # centred crops (data.whole_volumes: false): the grid is all there is
            metrics, prediction, label = self._evaluate(batch, "test")
            rows = segmentation_rows(batch["session_ids"], metrics)
            for row, predicted, truth in zip(rows, prediction.cpu().numpy(), label.cpu().numpy(), strict=True):
                row.update(lesion_metrics(predicted[0], truth[0], self.spacing))  # foreground: any label above 0
            self._test_rows += rows
            return
        logits, _ = self._logits_and_loss(batch, "test")
        prediction = logits.argmax(1, keepdim=True).to(torch.uint8).cpu().numpy()
        for i, case in enumerate(batch["session_ids"]):
            metrics, lesions, _ = native_case_metrics(prediction[i], batch["affines"][i], batch["label_paths"][i],
                                                      self.num_classes)
            self._log_metrics(metrics, "test", 1)
            self._test_rows.append(segmentation_rows([case], metrics)[0] | lesions)

    def on_test_epoch_end(self) -> None:
        """Write ``test_metrics.csv`` (rows of every rank, each case once) on rank 0."""
        rows = self._test_rows
        self._test_rows = []
        if self._trainer is None:
            return
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[list[dict[str, object]] | None] = [None] * self.trainer.world_size
            dist.all_gather_object(gathered, rows)
            by_case: dict[object, dict[str, object]] = {}
            for row in (r for part in gathered for r in part or []):
                by_case.setdefault(row["case"], row)  # a session repeated to fill a rank counts once
            rows = sorted(by_case.values(), key=lambda r: str(r["case"]))
        log_dir = self.trainer.log_dir
        if rows and log_dir and self.trainer.is_global_zero:
            write_metrics_csv(rows, Path(log_dir) / "test_metrics.csv")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Label maps uint8 ``[B, 1, *S]`` of the batch's sessions, with the geometry of whole volumes.

        Returns ``session_ids``, ``modalities`` and ``prediction``; for whole volumes also ``affines`` and
        ``references`` (for :class:`SegmentationWriter`) and, when :attr:`return_probabilities`, ``probabilities``
        (float32 ``[B, num_classes, *S]`` on the CPU).
        """
        flips = tuple(self.hparams.get("test_time_flips") or ())
        probabilities = self.predict_probabilities(batch["images"], self.embed_batch(batch), batch["present"], flips,
                                                   batch.get("head_offset"))
        output = {"session_ids": batch["session_ids"], "modalities": batch["modalities"],
                  "prediction": probabilities.argmax(1, keepdim=True).to(torch.uint8)}
        if "affines" in batch:
            output.update(affines=batch["affines"], references=batch["references"])
        if self.return_probabilities:
            output["probabilities"] = probabilities.cpu()
        return output

    def configure_callbacks(self) -> list[Callback]:
        """A :class:`SegmentationWriter` for ``predict``, unless the trainer's callbacks hold one already."""
        callbacks = self.trainer.callbacks if self._trainer is not None else []
        return [] if any(isinstance(c, SegmentationWriter) for c in callbacks) else [SegmentationWriter()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also record the data's preprocessing (:func:`record_preprocessing`)."""
        super().on_save_checkpoint(checkpoint)
        record_preprocessing(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also warn when the data's spacing differs from training's (:func:`check_preprocessing`)."""
        super().on_load_checkpoint(checkpoint)
        check_preprocessing(self, checkpoint)


def record_preprocessing(module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Store the datamodule's ``spacing`` and ``crop_size`` in ``checkpoint["preprocessing"]``.

    Segmenting a new scan from the checkpoint alone (``brainfm segment``) then preprocesses it as training did.
    """
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if datamodule is None:
        return
    crop = getattr(datamodule, "crop_size", None)
    checkpoint["preprocessing"] = {"spacing": getattr(datamodule, "spacing", None),
                                   "crop_size": list(crop) if crop is not None else None}


def check_preprocessing(module: L.LightningModule, checkpoint: Mapping[str, Any]) -> None:
    """Warn when the datamodule resamples to another spacing than the checkpoint was trained on.

    The network would then see anatomy at another scale; the warning names both values and the fix.
    """
    trained = (checkpoint.get("preprocessing") or {}).get("spacing")
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    current = getattr(datamodule, "spacing", None)
    if trained is not None and current is not None and abs(float(trained) - float(current)) > 1e-6:
        rank_zero_warn(f"the checkpoint was trained on data resampled to {trained} mm but data.spacing is {current}: "
                       f"set --data.spacing {trained} to preprocess as in training")

"""LightningModule for segmentation: a (pretrained) ModalityMAE encoder under a UNETR decoder, any modality subset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from lightning.pytorch.cli import OptimizerCallable
from monai.losses import DiceCELoss

from brainfm_lightning.models import ModalityMAE, ModalityUNETR
from brainfm_lightning.modules.modality_embedding import injected_hparams_to_ignore
from brainfm_lightning.modules.segmenter import (
    SegmenterBase,
    check_preprocessing,
    flip_averaged_probabilities,
    record_preprocessing,
    sliding_window_logits,
)
from brainfm_lightning.modules.transfer import FreezeMode, TransferModule, check_optimization

# the shared segmenter helpers stay importable from here, where brainfm segment and the tests look for them
__all__ = ["SegmentationModule", "check_preprocessing", "flip_averaged_probabilities", "record_preprocessing",
           "sliding_window_logits"]


class SegmentationModule(SegmenterBase, TransferModule):
    """Voxel-wise segmentation from every available modality of a session (:class:`ModalityUNETR`), DiceCE loss.

    Validation, test and predict see each session's whole volume through sliding windows, test scores each case in
    native space into ``test_metrics.csv`` and predict writes masks on the reference scans (:class:`SegmenterBase`).

    Args:
        net: The encoder's network; its reconstruction decoder is kept (checkpoint layout) but frozen and unused.
        head: Builds the segmentation network as ``head(net)``: :class:`ModalityUNETR` or a partial of it; in a
            config its ``class_path`` with every ``init_args`` but ``net`` (``num_classes``, ``feature_size``, ...).
            The module segments the built network's ``num_classes`` classes.
        pretrained: A pretraining checkpoint: its ``net.*`` weights and modality table are loaded and a report is
            logged. An encoder weight missing from it, unknown to the network or of another shape raises, naming
            the keys; positional embeddings of another crop are interpolated to ``net``'s grid. Restoring a
            fine-tuned checkpoint in Python needs no pretraining file:
            ``SegmentationModule.load_from_checkpoint(path, net=..., head=..., pretrained=None)``.
        allow_partial: Load what fits and keep the other encoder weights at initialisation (listed in the report)
            instead of raising; the explicit way to fine-tune from a checkpoint of another architecture.
        freeze_encoder: ``none`` (full fine-tune), ``partial`` (embeddings and the first half of the blocks) or
            ``full`` (decoder only).
        layer_decay: Layer-wise lr decay of the encoder (1: none; BEiT/MAE use 0.65-0.75).
        optimizer: Optimizer factory; receives parameter groups.
        weight_decay: Weight decay of weights (not biases, norms, embeddings).
        warmup_steps: Learning-rate warm-up, in steps (>= 1) or as a fraction of all steps (< 1).
        min_lr_ratio: Final learning rate of the cosine schedule over the peak.
        head_only_steps: Steps (>= 1) or fraction of all steps (< 1) during which only the head learns: the
            encoder's learning rate is zero, then rises over the warm-up length to the common schedule (linear
            probing then fine-tuning, so a random head does not first pull the pretrained features apart).
        voxel_spacing: Spacing in mm for HD95; ``None`` takes the datamodule's ``spacing`` (or 1, in voxels).
        sw_batch_size: Windows per forward pass of sliding-window inference.
        sw_overlap: Overlap of the sliding windows.
        sw_stitch_on_cpu: Accumulate sliding-window outputs on the CPU (bounded accelerator memory for whole heads).
        sw_on_lattice: Place every window a whole number of patches from the head's centre, where the training
            crops (``crop_step`` = patch size) lie; False: MONAI's placement, windows at any sub-patch phase.
        test_time_flips: Spatial axes (0: left-right on the RAS grid, 1, 2) whose mirrored inputs are also
            predicted at ``predict``, their softmax averaged with the plain pass (flip test-time augmentation).
        text_encoder: Embeds modality names absent from the table (``minilm``, ``biobert`` or a folder).
        modality_table: Optional precomputed table to start from.
        descriptions: Extra modality name -> text to embed.
        aliases: Extra alias -> canonical modality name.
    """

    def __init__(
        self,
        net: ModalityMAE,
        head: Callable[[ModalityMAE], ModalityUNETR] = ModalityUNETR,
        pretrained: str | None = None,
        allow_partial: bool = False,
        freeze_encoder: FreezeMode = "none",
        layer_decay: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        weight_decay: float = 0.05,
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.0,
        head_only_steps: float = 0.0,
        voxel_spacing: float | Sequence[float] | None = None,
        sw_batch_size: int = 2,
        sw_overlap: float = 0.25,
        sw_stitch_on_cpu: bool = True,
        sw_on_lattice: bool = True,
        test_time_flips: Sequence[int] = (),
        text_encoder: str = "minilm",
        modality_table: str | None = None,
        descriptions: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        segmenter = head(net)
        super().__init__(segmenter.num_classes, voxel_spacing)
        check_optimization(weight_decay, layer_decay, warmup_steps, head_only_steps)
        self.save_hyperparameters(ignore=injected_hparams_to_ignore())
        self.segmenter = segmenter
        self.optimizer_factory: Callable = optimizer
        self._init_transfer(pretrained, freeze_encoder, text_encoder, modality_table, descriptions, aliases,
                            allow_partial)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    @property
    def net(self) -> ModalityMAE:  # type: ignore[override]
        """The encoder's :class:`ModalityMAE` (``segmenter.net``)."""
        return self.segmenter.net

    def forward(self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
                head_offset: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes, *img_size]`` of crops ``images`` ``[B, M, *img_size]`` at ``head_offset``."""
        return self.segmenter(images, modality_embeddings, present, head_offset)

    def predict_logits(
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
        head_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of volumes of any size: one pass for a crop, MONAI sliding windows (Gaussian blend) otherwise.

        Each window's ``head_offset`` is the volume's plus the window's place in it; with ``sw_on_lattice`` every
        window's lies on the patch lattice.
        """
        if tuple(images.shape[2:]) == tuple(self.net.img_size):
            return self(images, modality_embeddings, present, head_offset)
        if head_offset is None:
            head_offset = images.new_zeros(images.shape[0], 3)
        rows = []
        for i in range(images.shape[0]):  # windows of one session share its embeddings and present slots

            def predictor(window: torch.Tensor, places: torch.Tensor, row: int = i) -> torch.Tensor:
                n = window.shape[0]
                return self(window, modality_embeddings[row:row + 1].expand(n, -1, -1),
                            present[row:row + 1].expand(n, -1), head_offset[row:row + 1].to(places) + places)

            lattice = self.net.patch_size if self.hparams.get("sw_on_lattice", True) else None
            rows.append(self._sliding_window(images[i:i + 1], predictor, self.net.img_size, lattice,
                                             head_offset[i].tolist()))
        return torch.cat(rows)

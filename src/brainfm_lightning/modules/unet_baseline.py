"""The baseline BrainFM is compared to: a from-scratch nnU-Net-style 3D U-Net on a FIXED list of modality channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import DynUNet
from torch import nn
from typing_extensions import override

from brainfm_lightning.modules.modality_embedding import injected_hparams_to_ignore
from brainfm_lightning.modules.schedule import cosine_with_warmup, parameter_groups, stepping_batches, warmup_steps
from brainfm_lightning.modules.segmenter import SegmenterBase
from brainfm_lightning.modules.transfer import check_optimization
from brainfm_lightning.sizes import to_3tuple

UnknownPolicy = Literal["error", "ignore"]
NNUNET_FILTERS = (32, 64, 128, 256, 320)


def to_channels(images: torch.Tensor, channel_one_hot: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Slots ``[B, M, *S]`` -> fixed channels ``[B, C, *S]``: each present slot lands on its channel, the rest is 0.

    Args:
        images: Scans in the batch's slot order; padded slots may hold anything (NaN too).
        channel_one_hot: ``[B, M, C]``, the one-hot channel of each slot (all zero: the slot has no channel).
        present: bool ``[B, M]``.
    """
    is_present = present[:, :, None, None, None]
    kept = images.masked_fill(~is_present, 0.0)  # 0 * NaN would leak into the sum
    return torch.einsum("bm...,bmc->bc...", kept, channel_one_hot * present[..., None].to(images.dtype))


class UNetBaselineModule(SegmenterBase):
    """nnU-Net-style segmentation (MONAI ``DynUNet``, instance norm, optional deep supervision) trained from scratch.

    Unlike BrainFM it has one input channel per modality of a fixed list: a session's scans go to their channels and
    the channels of modalities it lacks are zeros. It shares the rest with :class:`SegmentationModule` through
    :class:`SegmenterBase` (DiceCE loss, sliding-window inference, per-case Dice/HD95/sensitivity/specificity,
    ``test_metrics.csv``, predictions): its
    :meth:`modality_embeddings` are the one-hot channels of the slots, so it also fits
    :func:`~brainfm_lightning.evaluation.evaluate_modality_subsets`, which drops modalities through ``present``.

    Args:
        modalities: The input channels, in order (e.g. ``[T1, T2, PD, FLAIR]``).
        unknown_modalities: A scan whose modality is not in ``modalities``: ``error`` raises naming it; ``ignore``
            drops it (its information is lost, a fixed-channel model cannot use it) with one warning per name.
        num_classes: Classes including background.
        img_size: Training crop and sliding-window size; must equal ``data.crop_size``.
        filters: Channels per resolution level, full resolution first; each level halves the size (default
            nnU-Net's 32, 64, 128, 256, 320). ``img_size`` must be divisible by ``2 ** (len(filters) - 1)``.
        deep_supervision: Also train on the logits of the ``deep_supervision_heads`` next-coarser decoder levels
            (upsampled), summing their DiceCE with weights 1, 1/2, 1/4, ... (MONAI's ``DeepSupervisionLoss``; nnU-Net
            also halves the weight per level, but normalises the sum); inference uses the full-resolution head only.
        deep_supervision_heads: Extra heads under deep supervision (< ``len(filters) - 1``).
        optimizer: Optimizer factory; receives parameter groups.
        weight_decay: Weight decay of convolution weights (not biases or norms).
        warmup_steps: Learning-rate warm-up, in steps (>= 1) or as a fraction of all steps (< 1).
        min_lr_ratio: Final learning rate of the cosine schedule over the peak.
        voxel_spacing: Spacing in mm for HD95; ``None`` takes the datamodule's ``spacing`` (or 1, in voxels).
        sw_batch_size: Windows per forward pass of sliding-window inference.
        sw_overlap: Overlap of the sliding windows.
    """

    def __init__(
        self,
        modalities: Sequence[str] = ("T1", "T2", "PD", "FLAIR"),
        unknown_modalities: UnknownPolicy = "error",
        num_classes: int = 2,
        img_size: int | Sequence[int] = 64,
        filters: Sequence[int] = NNUNET_FILTERS,
        deep_supervision: bool = False,
        deep_supervision_heads: int = 1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        weight_decay: float = 0.05,
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.0,
        voxel_spacing: float | Sequence[float] | None = None,
        sw_batch_size: int = 2,
        sw_overlap: float = 0.25,
    ) -> None:
        super().__init__(num_classes, voxel_spacing)
        self.channels, self.img_size = list(modalities), to_3tuple(img_size, "img_size")
        if not self.channels or len(set(self.channels)) != len(self.channels) or "" in self.channels:
            raise ValueError(f"modalities must be distinct non-empty names, got {self.channels}")
        if unknown_modalities not in ("error", "ignore"):
            raise ValueError(f"unknown_modalities must be 'error' or 'ignore', got {unknown_modalities!r}")
        levels = len(filters)
        if levels < 3:
            raise ValueError(f"filters needs at least 3 resolution levels, got {list(filters)}")
        if any(n % 2 ** (levels - 1) for n in self.img_size):
            raise ValueError(f"img_size {self.img_size} is not divisible by 2 ** (len(filters) - 1) = "
                             f"{2 ** (levels - 1)} (filters {list(filters)})")
        if deep_supervision and not 1 <= deep_supervision_heads < levels - 1:
            raise ValueError(f"deep_supervision_heads must lie in [1, {levels - 2}], got {deep_supervision_heads}")
        check_optimization(weight_decay, 1.0, warmup_steps)
        self.save_hyperparameters(ignore=injected_hparams_to_ignore())
        self.unet = DynUNet(3, len(self.channels), num_classes, kernel_size=[3] * levels,
                            strides=[1] + [2] * (levels - 1), upsample_kernel_size=[2] * (levels - 1),
                            filters=list(filters), norm_name=("instance", {"affine": True}),
                            deep_supervision=deep_supervision, deep_supr_num=deep_supervision_heads)
        self.optimizer_factory = optimizer
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        self.loss: nn.Module = DeepSupervisionLoss(dice_ce, weight_mode="exp") if deep_supervision else dice_ce
        self.channel_index = {name: c for c, name in enumerate(self.channels)}
        self.modality_table = None  # callbacks look for a text-embedding table; a fixed-channel model has none
        self._warned: set[str] = set()

    def setup(self, stage: str) -> None:
        """Check the data's crop size and modalities against the U-Net's, then as :class:`SegmenterBase`."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        crop = getattr(datamodule, "crop_size", None)
        if crop is not None and tuple(crop) != self.img_size:
            raise ValueError(f"data.crop_size {tuple(crop)} differs from the U-Net's img_size {self.img_size} "
                             "(model.img_size); set them equal")
        if hasattr(datamodule, "modality_names"):
            self.check_modalities(datamodule.modality_names)
        super().setup(stage)

    def check_modalities(self, names: Sequence[str]) -> None:
        """Raise (``unknown_modalities: error``) or warn once (``ignore``) about names that have no channel."""
        unknown = sorted({n for n in names if n and n not in self.channel_index} - self._warned)
        if not unknown:
            return
        if self.hparams.unknown_modalities == "error":
            raise ValueError(f"modalities {unknown} are not input channels of the U-Net {self.channels}: add them "
                             "to model.modalities, or set model.unknown_modalities: ignore to drop those scans")
        rank_zero_warn(f"modalities {unknown} are not input channels of the U-Net {self.channels}: their scans are "
                       "dropped (zero channels)")
        self._warned.update(unknown)

    def modality_embeddings(self, modalities: Sequence[Sequence[str]], like: torch.Tensor) -> torch.Tensor:
        """One-hot channels ``[B, M, C]`` of a batch's slot names (all zero for padding and ignored names)."""
        self.check_modalities([n for row in modalities for n in row])
        width = max((len(row) for row in modalities), default=0)
        one_hot = torch.zeros(len(modalities), width, len(self.channels), dtype=like.dtype, device=like.device)
        for b, row in enumerate(modalities):
            named = [n for n in row if n]
            if len(set(named)) != len(named):
                raise ValueError(f"a session holds a modality twice: {list(row)}")
            for m, name in enumerate(row):
                if name in self.channel_index:
                    one_hot[b, m, self.channel_index[name]] = 1.0
        return one_hot

    def embed_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """One-hot channels ``[B, M, C]`` of the batch's slots (:meth:`modality_embeddings`)."""
        return self.modality_embeddings(batch["modalities"], like=batch["images"])

    def forward(  # type: ignore[override]
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
        head_offset: torch.Tensor | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``[B, num_classes, *S]`` of slots ``images`` ``[B, M, *S]`` with one-hot channels ``[B, M, C]``.

        A convolutional network needs no ``head_offset``; it is accepted (and ignored) as BrainFM segmenters take it.

        While training with deep supervision: the list of every head's logits at full resolution, main head first
        (what the deep-supervision loss takes).
        """
        logits = self.unet(to_channels(images, modality_embeddings, present))
        if self.training and self.hparams.deep_supervision:
            return list(logits.unbind(1))  # DynUNet stacks the heads on dim 1
        return logits

    def _main_logits(self, channels: torch.Tensor) -> torch.Tensor:
        logits = self.unet(channels)
        return logits[:, 0] if logits.dim() == channels.dim() + 1 else logits  # stacked heads in train mode

    def predict_logits(
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
        head_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of volumes of any size: one pass for a crop, MONAI sliding windows (Gaussian blend) otherwise."""
        channels = to_channels(images, modality_embeddings, present)
        if tuple(channels.shape[2:]) == self.img_size:
            return self._main_logits(channels)
        return self._sliding_window(channels, lambda windows, _: self._main_logits(windows), self.img_size)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = self.optimizer_factory(parameter_groups(self, hp.weight_decay))  # biases and norms: no decay
        total = stepping_batches(self.trainer)
        scheduler = cosine_with_warmup(optimizer, total, warmup_steps(hp.warmup_steps, total), hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the channel list (and, as :class:`SegmenterBase`, the preprocessing)."""
        checkpoint["modality_channels"] = list(self.channels)
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of other channels (after :class:`SegmenterBase`'s spacing check)."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("modality_channels")
        if saved is not None and list(saved) != self.channels:
            raise ValueError(f"the checkpoint's U-Net channels {list(saved)} differ from model.modalities "
                             f"{self.channels}; the weights would read the wrong scans")

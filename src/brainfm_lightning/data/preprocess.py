"""Session preprocessing with torchio: one grid per session, foreground z-score, crop or pad to the model size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio
from torch.nn import functional as F

from brainfm_lightning.models.patch_embed import to_3tuple


def foreground(volume: torch.Tensor) -> torch.Tensor:
    """Head foreground: voxels above the minimum (zero-filled or skull-stripped background is excluded)."""
    return volume > volume.min()


class SessionPreprocessor:
    """Turns the scans of one session into a ``[M, D, H, W]`` float tensor on a shared grid.

    Steps: reorient to RAS, resample to ``spacing`` (if set), resample every scan to the session's reference
    (first) scan, z-score each scan on its foreground, pad to at least ``crop_size`` and crop (random offset for
    training, centred otherwise), optional random left-right flip.

    Args:
        crop_size: Output size, an int or a 3-tuple.
        spacing: Target voxel spacing in mm, or ``None`` to keep the reference scan's grid.
        random_crop: Draw the crop offset at random (training) instead of centring it.
        flip_probability: Probability of a left-right flip of the whole session.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        spacing: float | None = None,
        random_crop: bool = False,
        flip_probability: float = 0.0,
    ) -> None:
        self.crop_size = to_3tuple(crop_size, "crop_size")
        if spacing is not None and spacing <= 0:
            raise ValueError(f"spacing must be positive, got {spacing}")
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must lie in [0, 1], got {flip_probability}")
        self.spacing = spacing
        self.random_crop = random_crop
        self.flip_probability = flip_probability
        steps: list[tio.Transform] = [tio.ToCanonical()]
        if spacing is not None:
            steps.append(tio.Resample(spacing))
        self.grid_transform = tio.Compose(steps)
        self.normalize = tio.ZNormalization(masking_method=foreground)

    def __call__(
        self,
        volumes: dict[str, tuple[np.ndarray, np.ndarray]],
        label: tuple[np.ndarray, np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocess one session.

        Args:
            volumes: modality -> ``(data [X, Y, Z], affine)``; the first entry is the reference grid.
            label: Optional ``(mask [X, Y, Z], affine)`` resampled with nearest neighbour.
            rng: Random generator for the crop offset and flip.

        Returns:
            ``images`` float32 ``[M, *crop_size]`` in the order of ``volumes`` and ``label`` uint8
            ``[1, *crop_size]`` (or ``None``).
        """
        rng = rng if rng is not None else np.random.default_rng()
        names = list(volumes)
        images = {n: tio.ScalarImage(tensor=torch.from_numpy(d[None]), affine=a) for n, (d, a) in volumes.items()}
        if label is not None:
            mask = torch.from_numpy(label[0][None].astype(np.uint8))
            images["__label__"] = tio.LabelMap(tensor=mask, affine=label[1])
        subject = self.grid_transform(tio.Subject(images))
        reference = subject[names[0]]
        others = [n for n in subject.keys() if n != names[0] and not _same_grid(subject[n], reference)]
        if others:
            subject = tio.Resample(names[0])(subject)
        subject = self.normalize(subject)
        stacked = torch.cat([subject[n].data for n in names]).float()  # [M, X, Y, Z]
        label_tensor = subject["__label__"].data if label is not None else None
        stacked, label_tensor = self._crop(stacked, label_tensor, rng)
        if self.flip_probability and rng.random() < self.flip_probability:
            stacked = stacked.flip(1)  # axis 1 of [M, X, Y, Z] is left-right in RAS
            label_tensor = label_tensor.flip(1) if label_tensor is not None else None
        return stacked.contiguous(), label_tensor.contiguous() if label_tensor is not None else None

    def _crop(
        self, stacked: torch.Tensor, label: torch.Tensor | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # pad each scan with its own background value so padding looks like the region outside the head
        shape = stacked.shape[1:]
        pad = [max(c - s, 0) for c, s in zip(self.crop_size, shape, strict=True)]
        if any(pad):
            widths = [w for p in reversed(pad) for w in (p // 2, p - p // 2)]  # F.pad wants the last axis first
            background = stacked.flatten(1).min(dim=1).values[:, None, None, None]
            stacked = F.pad(stacked - background, widths) + background
            label = F.pad(label, widths) if label is not None else None
        shape = stacked.shape[1:]
        if self.random_crop:
            start = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, self.crop_size, strict=True)]
        else:
            start = [(s - c) // 2 for s, c in zip(shape, self.crop_size, strict=True)]
        window = (slice(None),) + tuple(slice(b, b + c) for b, c in zip(start, self.crop_size, strict=True))
        return stacked[window], (label[window] if label is not None else None)


def _same_grid(image: tio.Image, reference: tio.Image) -> bool:
    return image.spatial_shape == reference.spatial_shape and np.allclose(image.affine, reference.affine, atol=1e-3)

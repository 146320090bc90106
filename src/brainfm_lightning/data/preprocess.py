"""Session preprocessing with torchio: one grid per session, head-foreground z-score, crop or pad to the model size."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio
from monai.transforms.utils import generate_spatial_bounding_box
from scipy import ndimage
from skimage.filters import threshold_otsu

from brainfm_lightning.sizes import to_3tuple


def foreground(volume: torch.Tensor, rim: int = 2) -> torch.Tensor:
    """Head foreground of one scan ``[X, Y, Z]``: Otsu's head region, holes filled, grown, above the minimum.

    Works with and without skull stripping. Otsu's threshold (scikit-image) separates the head from the air whether
    the background is noise (a raw scan, where "above the minimum" alone would be the whole field of view) or
    exactly constant (a skull-stripped or zero-filled scan). Only the largest connected bright region is kept (no
    specks of noise or artefact in the air), and enclosed dark regions (ventricles, the skull's signal void) are
    filled back in. Otsu's region leaves out the darkest tissue at the edge of a skull-stripped brain (sulcal CSF),
    so it is grown by ``rim`` voxels and cut back to the voxels above the minimum: for skull-stripped data that is
    the whole brain mask (the usual nonzero mask), for a raw scan the head with a thin rim of air. A scan whose
    values are all equal has no foreground.
    """
    values = volume.numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if values.min() == values.max():
        return torch.zeros(values.shape, dtype=torch.bool)
    components, count = ndimage.label(values > threshold_otsu(values))
    if count > 1:  # the head is the largest bright region; isolated noise or artefact specks are not
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        components = components == sizes.argmax()
    head = ndimage.binary_fill_holes(components > 0)
    if rim:
        head = ndimage.binary_dilation(head, iterations=rim)
    return torch.from_numpy(head & (values > values.min()))


def zscore(volume: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(volume - mean) / std`` over the voxels of ``mask`` (float64 statistics, population std).

    A mask with fewer than two voxels or a constant foreground falls back to the statistics of the whole volume,
    and a constant volume becomes zeros.
    """
    values = volume.double()
    selected = values[mask] if int(mask.sum()) > 1 else values.flatten()
    mean, std = selected.mean(), selected.std(correction=0)
    if std == 0:
        mean, std = values.mean(), values.std(correction=0)
    return ((values - mean) / std if std > 0 else torch.zeros_like(values)).float()


class SessionPreprocessor:
    """Turns the scans of one session into a ``[M, D, H, W]`` float tensor on a shared grid.

    Steps: reorient to RAS (a no-op for scans read with :func:`~brainfm_lightning.data.io.load_scan`, which already
    did), resample to ``spacing`` (if set), resample every scan to the session's reference (first) scan, z-score
    each scan on its head foreground (:func:`foreground`), crop to the head (the bounding box of the union of the
    foregrounds plus a margin), pad to at least ``crop_size`` and crop (random offset for training, centred
    otherwise), optional random left-right flip and, with ``augment``, random affine, bias field, gamma and noise
    (torchio), drawn from the same per-sample generator so a sample is reproducible. The deterministic steps are
    :meth:`to_grid` (what ``brainfm data prepare`` stores), the random ones :meth:`crop_and_flip` (which also reads
    memory maps).

    Args:
        crop_size: Output size, an int or a 3-tuple.
        spacing: Target voxel spacing in mm, or ``None`` to keep the reference scan's grid.
        random_crop: Draw the crop offset at random (training) instead of centring it.
        crop_step: With ``random_crop``, the random crops lie a whole number of ``crop_step`` voxels (an int or a
            3-tuple) from the centred crop. ``1``: any offset. The patch size: every crop's patches lie on the
            centred crop's patch lattice, so a network with positions in head coordinates sees each place in the
            head at one sub-patch phase (4 mm demo pool, 1000 steps: masked-patch error 0.19 on the lattice, 0.32
            with any offset; docs/label_efficiency.md).
        flip_probability: Probability of a left-right flip of the whole session.
        augment: Apply the random affine/bias-field/gamma/noise augmentation after the crop (training only).
        foreground_margin: Voxels kept around the head's bounding box.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        spacing: float | None = None,
        random_crop: bool = False,
        crop_step: int | Sequence[int] = 1,
        flip_probability: float = 0.0,
        augment: bool = False,
        foreground_margin: int = 2,
    ) -> None:
        self.crop_size = to_3tuple(crop_size, "crop_size")
        if spacing is not None and spacing <= 0:
            raise ValueError(f"spacing must be positive, got {spacing}")
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must lie in [0, 1], got {flip_probability}")
        self.spacing = spacing
        self.random_crop = random_crop
        self.crop_step = to_3tuple(crop_step, "crop_step")  # ValueError naming it unless positive
        self.flip_probability = flip_probability
        self.to_canonical = tio.ToCanonical()
        self.foreground_margin = foreground_margin
        self.augmentation = augmentation() if augment else None

    def __call__(
        self,
        volumes: dict[str, tuple[np.ndarray, np.ndarray]],
        label: tuple[np.ndarray, np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        """Preprocess one session.

        Args:
            volumes: modality -> ``(data [X, Y, Z], affine)``; the first entry is the reference grid.
            label: Optional ``(mask [X, Y, Z], affine)`` resampled with nearest neighbour.
            rng: Random generator for the crop offset and flip.

        Returns:
            ``images`` float32 ``[M, *crop_size]`` in the order of ``volumes``, ``label`` uint8 ``[1, *crop_size]``
            (or ``None``) and the crop's ``head_offset`` (:meth:`crop_and_flip`).
        """
        rng = rng if rng is not None else np.random.default_rng()
        stacked, label_tensor, _ = self.to_grid(volumes, label)
        background = stacked.flatten(1).min(dim=1).values.numpy()
        return self.crop_and_flip(stacked.numpy(), label_tensor.numpy() if label_tensor is not None else None,
                                  background, rng)

    def to_grid(
        self, volumes: dict[str, tuple[np.ndarray, np.ndarray]], label: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        """The deterministic steps: RAS, ``spacing``, the reference scan's grid and the foreground z-score.

        Args:
            volumes: As in :meth:`__call__`.
            label: As in :meth:`__call__`.

        Returns:
            ``images`` float32 ``[M, X, Y, Z]``, ``label`` uint8 ``[1, X, Y, Z]`` (or ``None``) and the 4x4 affine
            of the shared grid.
        """
        names = list(volumes)
        images = {n: tio.ScalarImage(tensor=torch.from_numpy(d[None]), affine=a) for n, (d, a) in volumes.items()}
        if label is not None:
            mask = torch.from_numpy(label[0][None].astype(np.uint8))
            images["__label__"] = tio.LabelMap(tensor=mask, affine=label[1])
        with torch.random.fork_rng(devices=[]):  # torchio draws from torch's RNG even in deterministic transforms
            subject = self.to_canonical(tio.Subject(images))
            reference = subject[names[0]]
            if self.spacing is not None and not np.allclose(reference.spacing, self.spacing, rtol=1e-4):
                # only the reference is resampled to ``spacing`` (a grid already there is kept as is, so a
                # prediction maps back exactly); the other scans and the label go once onto its grid
                reference = tio.Resample(self.spacing)(reference)
                subject[names[0]] = reference
            others = [n for n in subject.keys() if n != names[0] and not _same_grid(subject[n], reference)]
            if others:
                subject = tio.Resample(names[0], exclude=[names[0]])(subject)
        raw = [subject[n].data[0] for n in names]
        masks = [foreground(volume) for volume in raw]  # once per scan: the z-score and the head box share it
        stacked = torch.stack([zscore(volume, mask) for volume, mask in zip(raw, masks, strict=True)])  # [M, X, Y, Z]
        label_tensor = subject["__label__"].data if label is not None else None
        affine = np.asarray(subject[names[0]].affine)
        head = torch.stack(masks).any(dim=0, keepdim=True)  # [1, X, Y, Z]
        start, end = generate_spatial_bounding_box(head, margin=self.foreground_margin, allow_smaller=True)
        window = (slice(None), *(slice(b, e) for b, e in zip(start, end, strict=True)))
        affine = shift_origin(affine, start)  # the cropped grid starts at voxel ``start`` of the uncropped one
        label_tensor = label_tensor[window].contiguous() if label_tensor is not None else None
        return stacked[window].contiguous(), label_tensor, affine

    def crop_and_flip(
        self, images: np.ndarray, label: np.ndarray | None, background: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        """The random steps: pad to at least ``crop_size``, crop, optional left-right flip.

        Only the crop window is read from ``images``, so a memory-mapped array (the prepared cache) is not decoded
        whole.

        Args:
            images: ``[M, X, Y, Z]`` on the session grid, any float dtype, an array or a ``np.memmap``.
            label: ``[1, X, Y, Z]`` mask or ``None``; padded with 0.
            background: ``[M]`` value each scan is padded with (its minimum: the region outside the head).
            rng: Draws the crop offset (when ``random_crop``) and then the flip.

        Returns:
            ``images`` float32 ``[M, *crop_size]`` and ``label`` uint8 ``[1, *crop_size]`` (or ``None``), contiguous,
            and ``head_offset`` float32 ``[3]``: the crop's centre minus the head's centre (the centre of
            ``images``, the head's bounding box), in voxels, as the crop shows it (negated along the left-right
            axis when flipped: a mirrored head is a head whose crop lies on the other side).
        """
        start = crop_start(images.shape[1:], self.crop_size, self.random_crop, rng, self.crop_step)
        is_flipped = bool(self.flip_probability) and rng.random() < self.flip_probability
        offset = window_offset(images.shape[1:], start, self.crop_size)
        if is_flipped:
            offset[0] = -offset[0]
        cropped = take_window(images, start, self.crop_size, background, torch.float32, is_flipped)
        label_window = None
        if label is not None:
            label_window = take_window(label, start, self.crop_size, 0, torch.uint8, is_flipped)
        if self.augmentation is not None:
            cropped, label_window = self._augment(cropped, label_window, rng)
        return cropped, label_window, offset

    def pad_to_crop(
        self, images: np.ndarray, label: np.ndarray | None, affine: np.ndarray, background: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        """The whole volume for evaluation: never cropped, padded evenly to at least ``crop_size`` along short axes.

        Args:
            images: ``[M, X, Y, Z]`` on the session grid (an array or a ``np.memmap``).
            label: ``[1, X, Y, Z]`` mask or ``None``; padded with 0.
            affine: 4x4 affine of the session grid.
            background: ``[M]`` padding value of each scan; ``None``: each scan's minimum.

        Returns:
            ``images`` float32 ``[M, *max(shape, crop_size)]``, ``label`` uint8 (or ``None``) and the affine of the
            padded grid (its origin moved by the padding), so a prediction on it maps back onto the scans.
        """
        if background is None:
            background = np.asarray(images).reshape(len(images), -1).min(axis=1)
        shape = images.shape[1:]
        size = tuple(max(n, c) for n, c in zip(shape, self.crop_size, strict=True))
        start = tuple(-(max(c - n, 0) // 2) for n, c in zip(shape, self.crop_size, strict=True))
        padded = take_window(images, start, size, background, torch.float32)
        label_window = take_window(label, start, size, 0, torch.uint8) if label is not None else None
        return padded, label_window, shift_origin(affine, start)

    def _augment(
        self, images: torch.Tensor, label: torch.Tensor | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply torchio's random transforms to the crop, seeded from ``rng`` without touching torch's global RNG."""
        seed = int(rng.integers(2**62))
        parts = {f"scan{i}": tio.ScalarImage(tensor=images[i : i + 1]) for i in range(images.shape[0])}
        if label is not None:
            parts["label"] = tio.LabelMap(tensor=label)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            subject = self.augmentation(tio.Subject(parts))
        augmented = torch.cat([subject[f"scan{i}"].data for i in range(images.shape[0])]).float()
        return augmented.contiguous(), subject["label"].data.contiguous() if label is not None else None


def augmentation() -> tio.Compose:
    """Pretraining augmentation: small random affine, bias field, gamma and Gaussian noise (z-scored intensities)."""
    return tio.Compose([
        tio.RandomAffine(scales=0.1, degrees=10, translation=0, default_pad_value="minimum", p=0.5),
        tio.RandomBiasField(coefficients=0.3, p=0.3),
        tio.RandomGamma(log_gamma=0.2, p=0.3),
        tio.RandomNoise(std=(0, 0.05), p=0.3),
    ])


def shift_origin(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Affine of the grid whose first voxel is voxel ``start`` (negative: before the first) of ``affine``'s grid."""
    shifted = np.array(affine, dtype=np.float64)
    shifted[:3, 3] = shifted[:3, :3] @ np.asarray(start, dtype=np.float64) + shifted[:3, 3]
    return shifted


def centred_start(length: int, size: int) -> int:
    """First voxel of the centred ``size`` window along an axis of ``length`` voxels (negative where it is shorter).

    The odd voxel of room goes after the window, and an axis shorter than the window is padded evenly (the odd
    voxel after): the centred crop of training and the lattice origin of sliding-window inference.
    """
    return (max(length, size) - size) // 2 - max(size - length, 0) // 2


def crop_start(
    shape: Sequence[int], crop_size: Sequence[int], random_crop: bool, rng: np.random.Generator,
    step: Sequence[int] = (1, 1, 1),
) -> tuple[int, ...]:
    """First voxel of the crop window in the volume's coordinates; negative along axes shorter than the crop.

    A short axis is padded evenly (the odd voxel after) to ``crop_size``; the window then starts at a random offset
    (``random_crop``, one draw per axis, also on padded axes) or is centred (:func:`centred_start`).

    With ``step`` > 1 the random windows lie a whole number of ``step`` voxels from the centred one: every such
    window that holds a voxel of the volume no nearer window on that side holds, i.e. up to ``step - 1`` voxels past
    either end (padded like a short axis). These are the windows that whole-volume sliding-window inference on the
    lattice places (``sliding_window_logits``), so the network is trained at every place it is asked about.
    """
    starts = []
    for length, size, every in zip(shape, crop_size, step, strict=True):
        centred = centred_start(length, size)
        if not random_crop:
            starts.append(centred)
        elif every == 1:
            starts.append(int(rng.integers(0, max(length, size) - size + 1)) - max(size - length, 0) // 2)
        else:
            before, after = max(centred, 0), max(length - size - centred, 0)  # room on either side
            starts.append(centred + every * int(rng.integers(-math.ceil(before / every),
                                                             math.ceil(after / every) + 1)))
    return tuple(starts)


def window_offset(shape: Sequence[int], start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The centre of the window ``[start, start + size)`` minus the centre of a volume of ``shape``, float32 voxels."""
    return np.array([b + c / 2 - n / 2 for n, b, c in zip(shape, start, size, strict=True)], dtype=np.float32)


def take_window(
    volume: np.ndarray,
    start: Sequence[int],
    size: Sequence[int],
    fill: np.ndarray | float,
    dtype: torch.dtype,
    is_flipped: bool = False,
) -> torch.Tensor:
    """Copy the window ``[start, start + size)`` of ``volume`` ``[C, X, Y, Z]`` into a new ``[C, *size]`` tensor.

    Voxels of the window outside the volume take ``fill`` (a scalar or one value per channel). Only the overlap
    is read, so a ``np.memmap`` pages in just the window. ``is_flipped`` reverses axis 1 (left-right in RAS).
    """
    window = torch.empty((volume.shape[0], *size), dtype=dtype)
    source = [slice(max(b, 0), min(b + c, n)) for b, c, n in zip(start, size, volume.shape[1:], strict=True)]
    if any(s.stop - s.start < c for s, c in zip(source, size, strict=True)):
        window[...] = torch.as_tensor(np.asarray(fill), dtype=dtype).reshape(-1, 1, 1, 1)
    target = [slice(s.start - b, s.stop - b) for s, b in zip(source, start, strict=True)]
    # copied in the stored dtype, then converted by torch: numpy's float16 -> float32 cast is ~4x slower
    overlap = torch.from_numpy(np.array(volume[(slice(None), *source)], order="C"))  # a copy: memmaps are read-only
    if is_flipped:
        overlap = overlap.flip(1)
        target[0] = slice(size[0] - target[0].stop, size[0] - target[0].start)
    window[(slice(None), *target)] = overlap
    return window


def _same_grid(image: tio.Image, reference: tio.Image) -> bool:
    return image.spatial_shape == reference.spatial_shape and np.allclose(image.affine, reference.affine, atol=1e-3)

"""Random affine, bias field, gamma and noise on a collated batch, on the training device.

The same four transforms, ranges and probabilities as the worker-side torchio pipeline
(:func:`~brainfm_lightning.data.preprocess.augmentation`), applied to ``[B, M, D, H, W]`` batches after the
transfer to the device: one ``affine_grid``/``grid_sample`` for the whole batch instead of one SimpleITK resampling
per scan in a DataLoader worker. Each transform follows torchio's parametrisation: per session (all its scans and its
label map) one affine, one bias field and one gamma; the noise level is drawn per scan. Parameters are drawn from a
``torch.Generator`` on the CPU, so a batch's augmentation is reproducible from one seed whatever the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from brainfm_lightning.data.dataset import pad_collate


@dataclass
class AugmentationParams:
    """The random draws of one batch (``B`` sessions of ``M`` slots); a transform not drawn is the identity.

    Attributes:
        sampling: float ``[B, 3, 3]``: output -> input voxel offsets from the crop centre, axes (D, H, W);
            ``R^-1 S^-1`` as torchio resamples (scales ``S``, Euler rotation ``R``).
        has_affine: bool ``[B]``.
        bias_coefficients: float ``[B, K]`` polynomial coefficients (torchio's order), zero when not drawn.
        log_gamma: float ``[B]``, zero when not drawn.
        noise_std: float ``[B, M]``, zero when not drawn.
        noise_seed: Seed of the noise generator on the batch's device.
    """

    sampling: torch.Tensor
    has_affine: torch.Tensor
    bias_coefficients: torch.Tensor
    log_gamma: torch.Tensor
    noise_std: torch.Tensor
    noise_seed: int


class BatchAugmentation:
    """Batched random affine (linear), bias field, gamma and Gaussian noise, torchio's ranges.

    Args:
        affine_probability: Probability that a session is scaled and rotated.
        scales: Scale factors are drawn from ``U(1 - scales, 1 + scales)`` per axis.
        degrees: Rotation angles (Euler, about each axis) from ``U(-degrees, degrees)``.
        bias_probability: Probability of a multiplicative bias field ``exp(polynomial)``.
        bias_coefficients: Polynomial coefficients from ``U(-bias_coefficients, bias_coefficients)``.
        bias_order: Order of the polynomial in the normalised coordinates.
        gamma_probability: Probability of ``sign(x) * |x| ** gamma`` (torchio's form for negative intensities).
        log_gamma: ``log(gamma)`` from ``U(-log_gamma, log_gamma)``.
        noise_probability: Probability of additive Gaussian noise.
        noise_std: The noise's standard deviation is drawn from ``U(0, noise_std)`` per scan.
    """

    def __init__(
        self,
        affine_probability: float = 0.5,
        scales: float = 0.1,
        degrees: float = 10.0,
        bias_probability: float = 0.3,
        bias_coefficients: float = 0.3,
        bias_order: int = 3,
        gamma_probability: float = 0.3,
        log_gamma: float = 0.2,
        noise_probability: float = 0.3,
        noise_std: float = 0.05,
    ) -> None:
        for name, p in (("affine_probability", affine_probability), ("bias_probability", bias_probability),
                        ("gamma_probability", gamma_probability), ("noise_probability", noise_probability)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        if not 0.0 <= scales < 1.0:
            raise ValueError(f"scales must lie in [0, 1), got {scales}")
        for name, value in (("degrees", degrees), ("bias_coefficients", bias_coefficients),
                            ("log_gamma", log_gamma), ("noise_std", noise_std), ("bias_order", bias_order)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.affine_probability, self.scales, self.degrees = affine_probability, scales, degrees
        self.bias_probability, self.bias_coefficients, self.bias_order = bias_probability, bias_coefficients, bias_order
        self.gamma_probability, self.log_gamma = gamma_probability, log_gamma
        self.noise_probability, self.noise_std = noise_probability, noise_std
        self.bias_exponents = polynomial_exponents(bias_order)  # [K, 3]
        self._cached: dict[tuple, torch.Tensor] = {}  # identity grid and bias basis per (shape, device)

    def draw(self, batch_size: int, slots: int, generator: torch.Generator) -> AugmentationParams:
        """Draw every random parameter of a batch from ``generator`` (a CPU generator)."""

        def uniform(*shape: int, bound: float) -> torch.Tensor:
            return (2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1) * bound

        def coin(p: float) -> torch.Tensor:
            return torch.rand(batch_size, generator=generator, dtype=torch.float64) < p

        has_affine = coin(self.affine_probability)
        scales = 1 + uniform(batch_size, 3, bound=self.scales)
        angles = uniform(batch_size, 3, bound=math.radians(self.degrees))
        sampling = torch.linalg.inv(torch.diag_embed(scales) @ euler_rotation(angles))  # torchio's (S R)^-1
        sampling = torch.where(has_affine[:, None, None], sampling, torch.eye(3, dtype=torch.float64))
        has_bias = coin(self.bias_probability)
        bias = uniform(batch_size, len(self.bias_exponents), bound=self.bias_coefficients) * has_bias[:, None]
        has_gamma = coin(self.gamma_probability)
        log_gamma = uniform(batch_size, bound=self.log_gamma) * has_gamma
        has_noise = coin(self.noise_probability)
        noise_std = torch.rand(batch_size, slots, generator=generator, dtype=torch.float64) * self.noise_std
        noise_std = noise_std * has_noise[:, None]
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return AugmentationParams(sampling, has_affine, bias, log_gamma, noise_std, noise_seed)

    def __call__(
        self,
        images: torch.Tensor,
        present: torch.Tensor,
        label: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch.

        Args:
            images: float ``[B, M, D, H, W]`` on any device.
            present: bool ``[B, M]``; padded slots come back as zeros.
            label: Optional ``[B, 1, D, H, W]`` label map, moved by the same affine with nearest interpolation.
            generator: CPU generator the parameters are drawn from (``None``: one seeded from torch's global
                generator).

        Returns:
            The augmented ``images`` (same dtype) and ``label`` (same dtype, or ``None``).
        """
        if generator is None:  # seeded from torch's global generator (torch.seed() would reseed that one)
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        params = self.draw(images.shape[0], images.shape[1], generator)
        return self.apply(images, present, params, label)

    def apply(
        self, images: torch.Tensor, present: torch.Tensor, params: AugmentationParams, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply drawn parameters: affine, then bias field, gamma and noise (torchio's order).

        Works in place on a float32 copy of ``images`` (padded slots stay zero: every step maps 0 to 0 on them and
        the noise skips them); only the sessions a transform was drawn for are touched.
        """
        dtype, device = images.dtype, images.device
        images = images.to(torch.float32, copy=True)
        chosen = params.has_affine.nonzero().flatten().tolist()
        if chosen:
            grid = self._grid(params.sampling[chosen], images.shape[2:], device)
            selected = images[chosen]
            # pad with each scan's minimum (torchio's default_pad_value="minimum"): shift it to zero, sample, shift back
            minimum = selected.flatten(2).amin(dim=2)[..., None, None, None]
            moved = F.grid_sample(selected - minimum, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            images[chosen] = moved + minimum
            if label is not None:
                moved_label = F.grid_sample(label[chosen].float(), grid, mode="nearest", padding_mode="zeros",
                                            align_corners=False)
                label = label.clone()
                label[chosen] = moved_label.round().to(label.dtype)
        chosen = params.bias_coefficients.abs().sum(dim=1).nonzero().flatten().tolist()
        if chosen:
            field = bias_field(params.bias_coefficients[chosen], self._basis(images.shape[2:], device))
            for row, session in enumerate(chosen):
                images[session].mul_(field[row])
        for session in params.log_gamma.nonzero().flatten().tolist():
            gamma = float(params.log_gamma[session].exp())
            images[session] = torch.copysign(images[session].abs().pow_(gamma), images[session])
        noise_std = params.noise_std * present.cpu()
        noise_generator = None
        for session in noise_std.abs().sum(dim=1).nonzero().flatten().tolist():
            if noise_generator is None:
                noise_generator = torch.Generator(device=device).manual_seed(params.noise_seed)
            for slot in noise_std[session].nonzero().flatten().tolist():
                noise = torch.randn(images.shape[2:], generator=noise_generator, device=device)
                images[session, slot].add_(noise, alpha=float(noise_std[session, slot]))
        return images.to(dtype), label

    def _grid(self, sampling: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
        key = ("grid", tuple(shape), str(device))
        if key not in self._cached:
            self._cached[key] = identity_grid(shape, device)
        return sampling_grid(sampling, shape, self._cached[key])

    def _basis(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        key = ("basis", tuple(shape), str(device))
        if key not in self._cached:
            self._cached[key] = polynomial_basis(self.bias_exponents, shape).to(device, torch.float32)
        return self._cached[key]


class AugmentingCollate:
    """:func:`pad_collate`, then :class:`BatchAugmentation`: the batched augmentation inside the DataLoader workers.

    For machines without an accelerator, where augmenting after the transfer would take the training process's own
    cores: the workers augment the next batches while the model computes. Seeded by ``seed`` and the batch's sample
    keys (epoch, index), so a batch is augmented alike whichever worker builds it, and after a resume.

    Args:
        augmentation: The transforms.
        seed: The run's data seed.
    """

    def __init__(self, augmentation: BatchAugmentation, seed: int = 0) -> None:
        self.augmentation = augmentation
        self.seed = seed

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        """Collate ``samples`` (:func:`pad_collate`) and augment the batch; ``None`` when no sample is usable."""
        batch = pad_collate(samples)
        if batch is None:
            return None
        keys = [part for sample in samples if sample is not None for part in sample["sample_key"]]
        seed = int(np.random.SeedSequence([self.seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))
        images, label = self.augmentation(batch["images"], batch["present"], batch.get("label"),
                                          generator=torch.Generator().manual_seed(seed))
        batch["images"] = images
        if label is not None:
            batch["label"] = label
        return batch


def euler_rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[B, 3, 3]`` from angles ``[B, 3]`` (radians) about axes 0, 1, 2: ``R2 @ R1 @ R0``."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def rotation(axis: int) -> torch.Tensor:
        c, s = cos[:, axis], sin[:, axis]
        a, b = [i for i in range(3) if i != axis]
        rows = [[one, zero, zero], [zero, one, zero], [zero, zero, one]]
        rows[a][a], rows[a][b], rows[b][a], rows[b][b] = c, -s, s, c
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    return rotation(2) @ rotation(1) @ rotation(0)


def identity_grid(shape: tuple[int, ...] | torch.Size, device: torch.device) -> torch.Tensor:
    """``[D, H, W, 3]`` voxel-centre offsets from the crop centre, in voxels, ordered (D, H, W)."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2 for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def sampling_grid(sampling: torch.Tensor, shape: tuple[int, ...] | torch.Size, identity: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` grid ``[B, D, H, W, 3]`` for output->input maps ``[B, 3, 3]`` in voxels about the centre.

    ``grid_sample`` (``align_corners=False``) reads normalised coordinates ``(2 p + 1) / n - 1`` ordered (W, H, D);
    ``identity`` is :func:`identity_grid`, so a voxel offset ``p`` maps to ``A p`` and then to ``2 A p / n``.
    """
    size = torch.tensor([float(s) for s in shape], dtype=torch.float64)
    to_normalised = (sampling * (2 / size)[None, :, None]).flip(1)  # rows ordered (W, H, D) as grid_sample reads
    batch = len(sampling)
    grid = identity.reshape(1, -1, 3) @ to_normalised.transpose(1, 2).to(identity.device, identity.dtype)
    return grid.reshape(batch, *shape, 3)


def polynomial_exponents(order: int) -> torch.Tensor:
    """``[K, 3]`` exponents ``(i, j, k)`` with ``i + j + k <= order``, in torchio's coefficient order."""
    return torch.tensor([(i, j, k) for i in range(order + 1) for j in range(order + 1 - i)
                         for k in range(order + 1 - i - j)], dtype=torch.float64)


def polynomial_basis(exponents: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """``[K, D, H, W]`` monomials ``x^i y^j z^k`` on voxel centres scaled to [-1, 1] per axis (as torchio)."""
    axes = [torch.linspace(-1, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
            for n in shape]
    powers = [axis[None, :] ** exponents[:, dim, None] for dim, axis in enumerate(axes)]  # [K, n] each
    return powers[0][:, :, None, None] * powers[1][:, None, :, None] * powers[2][:, None, None, :]


def bias_field(coefficients: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Multiplicative fields ``exp(sum_k a_k basis_k)`` ``[B, D, H, W]`` from coefficients ``[B, K]``."""
    return torch.einsum("bk,kdhw->bdhw", coefficients.to(basis.device, basis.dtype), basis).exp()

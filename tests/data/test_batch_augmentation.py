"""Batched device augmentation: geometry, label maps, parameter ranges, and the same distributions as torchio's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchio as tio
from scipy import stats

from brainfm_lightning.data.batch_augmentation import AugmentationParams, BatchAugmentation, euler_rotation

KS_P = 1e-3  # two-sample Kolmogorov-Smirnov: fail only on a clear difference of distributions


def params(batch: int, slots: int, sampling: torch.Tensor | None = None) -> AugmentationParams:
    """Parameters with every transform off but the affine ``sampling``, if given."""
    fields = dict(
        sampling=torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1) if sampling is None else sampling,
        has_affine=torch.zeros(batch, dtype=torch.bool) if sampling is None else torch.ones(batch, dtype=torch.bool),
        bias_coefficients=torch.zeros(batch, 20, dtype=torch.float64),
        log_gamma=torch.zeros(batch, dtype=torch.float64),
        noise_std=torch.zeros(batch, slots, dtype=torch.float64), noise_seed=0)
    return AugmentationParams(**fields)


def test_identity_affine_returns_the_input():
    images = torch.randn(2, 3, 8, 10, 12)
    present = torch.ones(2, 3, dtype=torch.bool)
    out, _ = BatchAugmentation().apply(images, present, params(2, 3, torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_quarter_turn_moves_image_and_label_like_rot90(axis):
    """A 90 degree rotation maps voxel centres onto voxel centres: bilinear and nearest are exact, on every axis."""
    generator = torch.Generator().manual_seed(axis)
    images = torch.randn(1, 2, 8, 8, 8, generator=generator)
    label = (torch.rand(1, 1, 8, 8, 8, generator=generator) > 0.7).to(torch.uint8)
    angles = torch.zeros(1, 3, dtype=torch.float64)
    angles[0, axis] = math.pi / 2
    sampling = euler_rotation(angles)
    out, moved = BatchAugmentation().apply(images, torch.ones(1, 2, dtype=torch.bool), params(1, 2, sampling), label)
    plane = [d + 2 for d in range(3) if d != axis]
    expected = [torch.rot90(images, k, plane) for k in (1, -1)]
    matches = [torch.allclose(out, e, atol=1e-4) for e in expected]
    assert any(matches)
    assert torch.equal(moved, torch.rot90(label, 1 if matches[0] else -1, plane)) and moved.dtype == torch.uint8


def test_label_follows_the_image_under_random_affines():
    """A label drawn from the image (a threshold) stays the threshold of the moved image, up to edge voxels."""
    images = torch.zeros(3, 1, 24, 24, 24)
    images[:, :, 6:18, 8:16, 5:20] = 1.0
    label = images.to(torch.uint8)
    augmentation = BatchAugmentation(affine_probability=1.0, scales=0.1, degrees=10, bias_probability=0,
                                     gamma_probability=0, noise_probability=0)
    out, moved = augmentation(images, torch.ones(3, 1, dtype=torch.bool), label, torch.Generator().manual_seed(1))
    assert set(moved.unique().tolist()) <= {0, 1} and moved.dtype == torch.uint8
    assert not torch.equal(moved, label)  # it moved
    agreement = ((out > 0.5).to(torch.uint8) == moved).float().mean()
    assert agreement > 0.995


def test_padded_slots_stay_zero_and_present_ones_change():
    images = torch.randn(4, 3, 8, 8, 8)
    present = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    images[~present] = 0
    augmentation = BatchAugmentation(1.0, bias_probability=1.0, gamma_probability=1.0, noise_probability=1.0)
    out, _ = augmentation(images, present, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[~present], torch.zeros_like(out[~present]))
    assert all(not torch.allclose(out[b, m], images[b, m]) for b, m in present.nonzero().tolist())


def test_same_seed_same_batch_other_seed_other_batch():
    images, present = torch.randn(4, 2, 8, 8, 8), torch.ones(4, 2, dtype=torch.bool)
    augmentation = BatchAugmentation(1.0, bias_probability=1.0, gamma_probability=1.0, noise_probability=1.0)
    first, _ = augmentation(images, present, generator=torch.Generator().manual_seed(5))
    again, _ = augmentation(images, present, generator=torch.Generator().manual_seed(5))
    other, _ = augmentation(images, present, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.allclose(first, other)


def test_parameter_ranges_and_probabilities():
    draws = BatchAugmentation().draw(4000, 3, torch.Generator().manual_seed(0))
    for has, expected in ((draws.has_affine, 0.5), (draws.bias_coefficients.abs().sum(1) > 0, 0.3),
                          (draws.log_gamma != 0, 0.3), (draws.noise_std.sum(1) > 0, 0.3)):
        assert abs(has.double().mean().item() - expected) < 0.03
    affine = draws.sampling[draws.has_affine]
    singular = torch.linalg.svdvals(affine)  # of S^-1 R^-1: the inverse scales, each in [1/1.1, 1/0.9]
    assert singular.min() >= 1 / 1.1 - 1e-9 and singular.max() <= 1 / 0.9 + 1e-9
    assert singular.min() < 1 / 1.09 and singular.max() > 1 / 0.91  # the whole range is used
    assert torch.equal(draws.sampling[~draws.has_affine], torch.eye(3, dtype=torch.float64).expand(
        int((~draws.has_affine).sum()), 3, 3))
    coefficients = draws.bias_coefficients[draws.bias_coefficients.abs().sum(1) > 0]
    assert coefficients.shape[1] == 20 and coefficients.abs().max() <= 0.3 and coefficients.abs().max() > 0.29
    gamma = draws.log_gamma[draws.log_gamma != 0]
    assert gamma.abs().max() <= 0.2 and gamma.abs().max() > 0.19
    noise = draws.noise_std[draws.noise_std.sum(1) > 0]
    assert noise.min() >= 0 and noise.max() <= 0.05 and noise.max() > 0.049


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="affine_probability"):
        BatchAugmentation(affine_probability=1.5)
    with pytest.raises(ValueError, match="scales"):
        BatchAugmentation(scales=1.0)
    with pytest.raises(ValueError, match="noise_std"):
        BatchAugmentation(noise_std=-0.1)


def _ours(transform: str, images: torch.Tensor, seed: int) -> torch.Tensor:
    only = dict(affine_probability=0.0, bias_probability=0.0, gamma_probability=0.0, noise_probability=0.0)
    only[f"{transform}_probability"] = 1.0
    out, _ = BatchAugmentation(**only)(images[None], torch.ones(1, len(images), dtype=torch.bool),
                                       generator=torch.Generator().manual_seed(seed))
    return out[0]


def _torchio(transform: tio.Transform, images: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    subject = tio.Subject({f"scan{i}": tio.ScalarImage(tensor=images[i : i + 1]) for i in range(len(images))})
    out = transform(subject)
    return torch.cat([out[f"scan{i}"].data for i in range(len(images))]).float()


def _compare(statistic, transform: str, torchio_transform: tio.Transform, images: torch.Tensor, draws: int = 150):
    ours = [statistic(_ours(transform, images, seed)) for seed in range(draws)]
    theirs = [statistic(_torchio(torchio_transform, images, seed)) for seed in range(draws)]
    result = stats.ks_2samp(np.concatenate(ours), np.concatenate(theirs))
    assert result.pvalue > KS_P, f"{transform}: {result}"
    return ours, theirs


def test_bias_field_matches_torchio():
    ones = torch.ones(1, 12, 12, 12)
    # the field at a corner and at an inner voxel, and its spread over the volume
    ours, _ = _compare(lambda out: np.array([math.log(out[0, 0, 0, 0]), math.log(out[0, 3, 8, 5]),
                                             float(out.log().std())]),
                       "bias", tio.RandomBiasField(coefficients=0.3, order=3), ones)
    assert np.std(ours) > 0.1  # the fields really vary


def test_gamma_matches_torchio_also_on_negative_intensities():
    images = torch.tensor([2.0, -3.0, 0.5]).reshape(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    _compare(lambda out: np.array([math.log(out[0, 0, 0, 0]) / math.log(2.0),
                                   math.log(-out[0, 1, 0, 0]) / math.log(3.0)]),
             "gamma", tio.RandomGamma(log_gamma=0.2), images)


def test_noise_matches_torchio():
    images = torch.zeros(2, 16, 16, 16)
    _compare(lambda out: out.flatten(1).std(dim=1).numpy(), "noise", tio.RandomNoise(std=(0, 0.05)), images)


def _linear_map(out: torch.Tensor) -> np.ndarray:
    """The 3x3 map (and offset) that moved coordinate images, fitted on voxels far from the border."""
    size = out.shape[1]
    centre = (size - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(size) - centre] * 3, indexing="ij"), -1)
    inner = (np.abs(grid) < size / 4).all(-1)
    design = np.concatenate([grid[inner], np.ones((int(inner.sum()), 1))], axis=1)
    values = out.numpy()[:, inner].T  # the input coordinate each output voxel was read from
    solution, *_ = np.linalg.lstsq(design, values, rcond=None)
    return solution[:3].T


def test_affine_matches_torchio():
    """Coordinate images reveal the sampling map: its determinant, scales and distance from the identity agree."""
    size = 16
    coordinates = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32) - (size - 1) / 2] * 3,
                                             indexing="ij"))  # [3, D, H, W], one image per axis

    def statistic(out: torch.Tensor) -> np.ndarray:
        matrix = _linear_map(out)
        singular = np.linalg.svd(matrix, compute_uv=False)  # the scales; rotations leave them alone
        return np.array([np.linalg.det(matrix), np.linalg.norm(matrix - np.eye(3)), singular[0], singular[-1]])

    torchio_affine = tio.RandomAffine(scales=0.1, degrees=10, translation=0, default_pad_value="minimum")
    ours, theirs = [], []
    for seed in range(120):
        ours.append(statistic(_ours("affine", coordinates, seed)))
        theirs.append(statistic(_torchio(torchio_affine, coordinates, seed)))
    ours, theirs = np.array(ours), np.array(theirs)
    for column, name in enumerate(("determinant", "distance from identity", "largest scale", "smallest scale")):
        result = stats.ks_2samp(ours[:, column], theirs[:, column])
        assert result.pvalue > KS_P, f"{name}: {result}"
    assert ours[:, 1].min() > 0.01  # every draw moved the image

"""Eq. (2), Eq. (3) and the masked MSE against direct float64 NumPy computations."""

import numpy as np
import pytest
import torch

from brainfm_lightning.losses import covariance_loss, masked_mse_loss, pretraining_loss, variance_loss


def numpy_variance_loss(z: np.ndarray, eps: float) -> float:
    z = z.astype(np.float64)
    n, d = z.shape
    total = 0.0
    for j in range(d):
        column = z[:, j]
        var = ((column - column.mean()) ** 2).sum() / (n - 1)
        total += max(0.0, 1.0 - np.sqrt(var + eps))
    return total / d


def numpy_covariance_loss(z: np.ndarray) -> float:
    z = z.astype(np.float64)
    n, d = z.shape
    centred = z - z.mean(axis=0)
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                cov = (centred[:, i] * centred[:, j]).sum() / (n - 1)
                total += cov**2
    return total / d


@pytest.mark.parametrize("scale", [0.1, 0.7, 3.0])
def test_variance_loss_matches_numpy(scale):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 12)) * scale * rng.uniform(0.2, 2.0, size=12)
    got = variance_loss(torch.from_numpy(z).float(), eps=1e-4)
    assert got.item() == pytest.approx(numpy_variance_loss(z, 1e-4), rel=1e-5, abs=1e-6)


def test_variance_loss_eps_sits_inside_the_root():
    z = torch.zeros(10, 4)  # zero variance: 1 - sqrt(0 + eps) = 0.99, not 1 - 0 + eps
    assert variance_loss(z, eps=1e-4).item() == pytest.approx(0.99, abs=1e-6)
    assert variance_loss(torch.randn(10000, 4) * 5).item() == 0.0  # std >= 1 is not penalised


@pytest.mark.parametrize("seed", [0, 1])
def test_covariance_loss_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(50, 3))
    z = np.concatenate([base, base @ rng.normal(size=(3, 5))], axis=1)  # correlated dimensions
    got = covariance_loss(torch.from_numpy(z).float())
    assert got.item() == pytest.approx(numpy_covariance_loss(z), rel=1e-4)


def test_covariance_loss_ignores_the_diagonal():
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    z = signs * torch.tensor([1.0, 9.0], dtype=torch.float64)  # orthogonal centred columns, large variances
    assert covariance_loss(z).item() == 0.0


def test_masked_mse_matches_numpy_over_masked_valid_voxels():
    rng = np.random.default_rng(3)
    pred, target = rng.normal(size=(2, 6, 8)), rng.normal(size=(2, 6, 8))
    is_masked = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=bool)
    expected = np.mean([(pred[b, n] - target[b, n]) ** 2 for b, n in zip(*np.nonzero(is_masked))])
    got = masked_mse_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(is_masked))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    only_masked = masked_mse_loss(torch.from_numpy(pred[is_masked]), torch.from_numpy(target[is_masked]))
    assert only_masked.item() == pytest.approx(expected, rel=1e-6)


def test_masked_mse_norm_pix_normalises_each_target_patch():
    rng = np.random.default_rng(4)
    pred, target = rng.normal(size=(1, 3, 16)), rng.normal(loc=5, scale=3, size=(1, 3, 16))
    is_masked = np.ones((1, 3), dtype=bool)
    normed = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    got = masked_mse_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(is_masked), True)
    assert got.item() == pytest.approx(((pred - normed) ** 2).mean(), rel=1e-6)


def test_masked_mse_does_not_clamp_predictions():
    pred, target = torch.full((1, 1, 4), 10.0), torch.zeros(1, 1, 4)
    assert masked_mse_loss(pred, target, torch.ones(1, 1, dtype=torch.bool)).item() == 100.0


def test_total_objective_eq4():
    total = pretraining_loss(torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0), 0.1, 0.003)
    assert total.item() == pytest.approx(2.0 + 0.3 + 0.015)


def test_losses_reject_wrong_shapes():
    with pytest.raises(ValueError, match="z must be"):
        variance_loss(torch.zeros(3))
    with pytest.raises(ValueError, match="z must be"):
        covariance_loss(torch.zeros(3, 2, 1))


def test_float64_features_are_not_downcast_and_agree_with_numpy_to_1e12():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(64, 4))
    z = np.concatenate([base, base @ rng.normal(size=(4, 6))], axis=1) * rng.uniform(0.1, 1.5, size=10)
    variance, covariance = variance_loss(torch.from_numpy(z), eps=1e-4), covariance_loss(torch.from_numpy(z))
    assert variance.dtype == covariance.dtype == torch.float64
    assert variance.item() == pytest.approx(numpy_variance_loss(z, 1e-4), rel=1e-12, abs=1e-14)
    assert covariance.item() == pytest.approx(numpy_covariance_loss(z), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_features_are_upcast_to_float32(dtype):
    z = torch.randn(32, 8).to(dtype)
    assert variance_loss(z).dtype == covariance_loss(z).dtype == torch.float32
    assert covariance_loss(z).item() == pytest.approx(covariance_loss(z.float()).item(), rel=1e-6)

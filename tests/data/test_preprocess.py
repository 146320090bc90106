"""SessionPreprocessor: head bounding box, shared grid, reproducible augmentation that leaves torch's RNG alone."""

import numpy as np
import pytest
import torch

from brainfm_lightning.data import SessionPreprocessor


def head_volume(shape=(40, 44, 36), box=((10, 30), (8, 36), (6, 26)), seed=0):
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, np.float32)
    volume[tuple(slice(a, b) for a, b in box)] = rng.uniform(50, 150, size=[b - a for a, b in box])
    return volume


def test_to_grid_crops_to_the_head_and_moves_the_origin():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40, -44, -36]
    volume = head_volume()
    label = (volume > 140).astype(np.uint8)
    images, mask, grid_affine = SessionPreprocessor(32, foreground_margin=2).to_grid(
        {"T1": (volume, affine), "T2": (volume[::-1].copy(), affine)}, (label, affine))
    # union of the two heads (the T2 one is mirrored on x): x 10..30 and 10..30 -> 8..32; y 6..38; z 4..28
    assert images.shape == (2, 24, 32, 24) and mask.shape == (1, 24, 32, 24)
    assert np.allclose(grid_affine[:3, 3], [-40 + 2 * 8, -44 + 2 * 6, -36 + 2 * 4])
    assert int(mask.sum()) == int(label.sum())  # the crop keeps every labelled voxel


def test_augmentation_is_reproducible_varies_and_keeps_torch_rng():
    preprocessor = SessionPreprocessor(24, random_crop=True, augment=True)
    volumes = {"T1": (head_volume(), np.eye(4)), "FLAIR": (head_volume(seed=1), np.eye(4))}
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, _ = preprocessor(volumes, rng=np.random.default_rng([0, 0, 5]))
    assert torch.equal(torch.rand(1), expected_next)  # global RNG untouched
    again, _ = preprocessor(volumes, rng=np.random.default_rng([0, 0, 5]))
    other, _ = preprocessor(volumes, rng=np.random.default_rng([0, 1, 5]))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (2, 24, 24, 24) and torch.isfinite(first).all()


@pytest.mark.parametrize("augment", [False, True])
def test_label_follows_the_spatial_transforms(augment):
    label = (head_volume() > 0).astype(np.uint8)[None]  # [1, X, Y, Z]
    preprocessor = SessionPreprocessor(24, random_crop=True, augment=augment)
    # the image is the mask itself: linear interpolation and bias/gamma/noise keep it near 0 and 1
    images, mask = preprocessor.crop_and_flip(label.astype(np.float32), label, np.zeros(1), np.random.default_rng(3))
    assert set(mask.unique().tolist()) <= {0, 1}
    agreement = ((images[0] > 0.5) == mask[0].bool()).float().mean()
    assert agreement > 0.97

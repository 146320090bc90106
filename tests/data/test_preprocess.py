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
    first, _, _ = preprocessor(volumes, rng=np.random.default_rng([0, 0, 5]))
    assert torch.equal(torch.rand(1), expected_next)  # global RNG untouched
    again, _, _ = preprocessor(volumes, rng=np.random.default_rng([0, 0, 5]))
    other, _, _ = preprocessor(volumes, rng=np.random.default_rng([0, 1, 5]))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (2, 24, 24, 24) and torch.isfinite(first).all()


@pytest.mark.parametrize("augment", [False, True])
def test_label_follows_the_spatial_transforms(augment):
    label = (head_volume() > 0).astype(np.uint8)[None]  # [1, X, Y, Z]
    preprocessor = SessionPreprocessor(24, random_crop=True, augment=augment)
    # the image is the mask itself: linear interpolation and bias/gamma/noise keep it near 0 and 1
    images, mask, _ = preprocessor.crop_and_flip(label.astype(np.float32), label, np.zeros(1), np.random.default_rng(3))
    assert set(mask.unique().tolist()) <= {0, 1}
    agreement = ((images[0] > 0.5) == mask[0].bool()).float().mean()
    assert agreement > 0.97


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_each_crop_says_where_its_centre_lies_from_the_head_centre(flip):
    """``head_offset``: the crop's centre minus the head box's centre in voxels; a mirrored crop, mirrored along x."""
    box = np.arange(40 * 30 * 20, dtype=np.float32).reshape(1, 40, 30, 20)  # a head box; every voxel unique
    preprocessor = SessionPreprocessor((16, 16, 24), random_crop=True, flip_probability=flip)
    for seed in range(5):
        crop, _, offset = preprocessor.crop_and_flip(box, None, np.full(1, -1.0), np.random.default_rng(seed))
        corner = int((crop[0].flip(0) if flip else crop[0])[0, 0, 2])  # z: 20 padded evenly to 24, box z = 0
        start_x, start_y = corner // 600, corner // 20 % 30
        expected = np.array([start_x + 8 - 20, start_y + 8 - 15, -2 + 12 - 10], dtype=np.float32)
        if flip:
            expected[0] = -expected[0]
        np.testing.assert_array_equal(offset, expected)
    centred = SessionPreprocessor((16, 16, 24)).crop_and_flip(box, None, np.full(1, -1.0), np.random.default_rng(0))
    np.testing.assert_array_equal(centred[2], np.zeros(3))


def test_samples_and_batches_carry_the_head_offset(tmp_path):
    import nibabel as nib

    from brainfm_lightning.data import Scan, Session, SessionDataset, pad_collate

    volume = head_volume()
    paths = {}
    for name in ("T1", "T2"):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(volume, np.eye(4)), paths[name])
    session = Session("sub-1", "ses-1", [Scan(n, p) for n, p in paths.items()])
    crops = SessionDataset([session, session], SessionPreprocessor(16, random_crop=True), seed=3)
    samples = [crops[(0, 0)], crops[(0, 1)]]
    assert all(s["head_offset"].shape == (3,) and s["head_offset"].dtype == torch.float32 for s in samples)
    assert samples[0]["head_offset"].abs().max() > 0  # a random crop of a 24 x 32 x 24 head is rarely centred
    batch = pad_collate(samples)
    assert torch.equal(batch["head_offset"], torch.stack([s["head_offset"] for s in samples]))
    whole = SessionDataset([session], SessionPreprocessor(16), whole_volume=True)[0]
    assert torch.equal(whole["head_offset"], torch.zeros(3))  # the head box padded evenly: centred on the head


def test_crop_step_keeps_random_crops_on_the_centred_crops_lattice_out_to_each_end():
    """On the lattice, crops reach each end of the head: the nearest lattice windows that hold its first and last
    voxels, up to a step minus one past it (padded), as whole-volume inference places its windows."""
    from brainfm_lightning.data.preprocess import crop_start

    shape, size = (50, 45, 20), (32, 32, 24)  # x: 18 voxels of room, y: 13
    centred = crop_start(shape, size, False, np.random.default_rng(0))
    assert centred == (9, 6, -2)
    starts = {crop_start(shape, size, True, np.random.default_rng(seed), (8, 8, 8)) for seed in range(400)}
    for start in starts:
        assert all((s - c) % 8 == 0 for s, c in zip(start, centred))
        assert all(-8 < s and s + c < n + 8 for s, c, n in zip(start[:2], size[:2], shape[:2]))  # < a step out
    assert start[2] == -2  # a short axis stays padded evenly: no room to move
    xs, ys = {s[0] for s in starts}, {s[1] for s in starts}
    assert xs == {-7, 1, 9, 17, 25}  # 1 misses voxel 0 and 17 voxel 49: -7 and 25 hold them
    assert ys == {-2, 6, 14}
    assert {crop_start(shape, size, True, np.random.default_rng(seed))[0] for seed in range(400)} == set(range(19))


@pytest.mark.parametrize("shape", [(42, 54, 43), (45, 55, 44), (20, 33, 70), (32, 41, 57)])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("phase", [(0.0, 0.0, 0.0), (3.0, -5.0, 8.0)])
def test_every_inference_window_on_the_lattice_is_a_crop_that_training_draws(shape, overlap, phase):
    """Sliding windows on the lattice (whole-volume validation, test, predict) sit exactly where random training
    crops of ``crop_step`` = patch size sit, to the voxel: no place, and no sub-patch phase, the network never saw.
    With the volume's own ``phase`` (its offset from the head), the windows' head offsets (place plus phase) stay on
    that lattice."""
    from brainfm_lightning.data.preprocess import crop_start, window_offset
    from brainfm_lightning.modules.segmenter import sliding_window_logits

    seen = []

    def predictor(windows: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
        seen.append(places.clone())
        return torch.zeros(windows.shape[0], 1, *windows.shape[2:])

    sliding_window_logits(torch.zeros(1, 1, *shape), predictor, (32, 32, 32), 2, overlap, lattice=(8, 8, 8),
                          phase=phase)
    inference = torch.cat(seen).numpy() + np.array(phase)  # head offsets of the windows
    trained = {tuple(window_offset(shape, crop_start(shape, (32, 32, 32), True, np.random.default_rng(seed),
                                                     (8, 8, 8)), (32, 32, 32)))
               for seed in range(600)}
    for axis in range(3):
        training_places = {t[axis] for t in trained}
        lattice = {p + 8 * k for p in training_places for k in range(-8, 9)}
        assert set(inference[:, axis].tolist()) <= lattice  # on the training lattice, sub-voxel phase included
        if phase == (0.0, 0.0, 0.0):
            assert set(inference[:, axis].tolist()) <= training_places  # and every place one training draws


    with pytest.raises(ValueError, match="crop_step must be a positive int or three positive ints, got 0"):
        SessionPreprocessor(32, crop_step=0)

"""Token positions in head coordinates: the continuous sin-cos against NumPy; one place in the head, one position."""

import numpy as np
import pytest
import torch

from brainfm_lightning.data.preprocess import window_offset
from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.models.pos_embed import sincos_3d, sincos_positions
from brainfm_lightning.models.seg_head import encoder_hidden_states


def _numpy_sincos(coords: np.ndarray, dim: int) -> np.ndarray:
    """The embedding written out per channel in float64: sin then cos of x_a * 10000^(-k/K), axis after axis."""
    per_axis = dim // 6
    out = np.zeros((len(coords), dim))
    for row, point in enumerate(coords):
        for axis in range(3):
            for k in range(per_axis):
                angle = point[axis] * 10000.0 ** (-k / per_axis)
                out[row, 2 * axis * per_axis + k] = np.sin(angle)
                out[row, 2 * axis * per_axis + per_axis + k] = np.cos(angle)
    return out


@pytest.mark.parametrize("dim", [48, 50, 192])
def test_sincos_of_continuous_positions_matches_numpy_float64(dim):
    coords = np.random.default_rng(0).uniform(-6, 6, size=(20, 3))
    got = sincos_positions(torch.from_numpy(coords), dim).double().numpy()
    np.testing.assert_allclose(got, _numpy_sincos(coords, dim), atol=1e-6)
    assert (got[:, 6 * (dim // 6):] == 0).all()


def test_integer_grid_embedding_is_the_continuous_one_at_the_cells():
    grid = (2, 3, 4)
    cells = np.stack(np.meshgrid(*(np.arange(g) for g in grid), indexing="ij"), -1).reshape(-1, 3)
    np.testing.assert_allclose(sincos_3d(grid, 36).double().numpy(), _numpy_sincos(cells, 36), atol=1e-6)


def test_token_positions_are_cell_centres_plus_the_offset_in_voxels():
    net = ModalityMAE(preset="test", img_size=(32, 32, 48), patch_size=16)  # grid 2 x 2 x 3
    positions = net.token_positions(torch.tensor([[16.0, -8.0, 4.0]]), 1)[0]
    expected = [[16 * d - 8 + 16, 16 * h - 8 - 8, 16 * w - 16 + 4]
                for d in range(2) for h in range(2) for w in range(3)]
    torch.testing.assert_close(positions, torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(net.token_positions(None, 2), net.token_positions(torch.zeros(2, 3), 2))
    with pytest.raises(ValueError, match=r"head_offset must be \[2, 3\]"):
        net.token_positions(torch.zeros(3), 2)


@pytest.mark.parametrize("pad_free", [True, False])
def test_one_place_in_the_head_embeds_alike_from_two_crops(pad_free):
    """Two crops of one volume, one patch apart: the cells they share get identical embedded tokens."""
    torch.manual_seed(0)
    net = ModalityMAE(preset="test", pad_free=pad_free).eval()  # 32^3 crops of 16^3 patches
    volume = torch.randn(2, 48, 32, 32)  # two sequences of one session, a head box longer than a crop along x
    starts = [(0, 0, 0), (16, 0, 0)]
    crops = torch.stack([volume[:, s[0]:s[0] + 32] for s in starts])
    offsets = torch.from_numpy(np.stack([window_offset((48, 32, 32), s, (32, 32, 32)) for s in starts]))
    assert offsets.tolist() == [[-8.0, 0.0, 0.0], [8.0, 0.0, 0.0]]
    embeddings = torch.randn(1, 2, 384).expand(2, -1, -1)
    present = torch.ones(2, 2, dtype=torch.bool)
    with torch.no_grad():
        (tokens,), _ = encoder_hidden_states(net, crops, embeddings, present, [0], offsets)
        (unplaced,), _ = encoder_hidden_states(net, crops, embeddings, present, [0])
    grid = tokens.reshape(2, 2, 2, 2, 2, -1)  # [crop, sequence, d, h, w, D]
    torch.testing.assert_close(grid[0, :, 1], grid[1, :, 0])  # the second half of crop 0 is the first of crop 1
    assert not torch.allclose(grid[0, :, 0], grid[1, :, 0], atol=1e-3)  # other places, other tokens
    # told nothing, both crops are taken as centred: the shared cells then differ
    shared = unplaced.reshape(2, 2, 2, 2, 2, -1)
    assert not torch.allclose(shared[0, :, 1], shared[1, :, 0], atol=1e-3)


def test_crop_positions_ignore_the_offset_and_keep_a_learnable_table():
    torch.manual_seed(0)
    net = ModalityMAE(preset="test", positions="crop").eval()
    assert "pos_embed" in dict(net.named_parameters()) and "decoder_pos_embed" in dict(net.named_parameters())
    assert "pos_embed" not in dict(ModalityMAE(preset="test").named_parameters())  # head positions: fixed sin-cos
    images, embeddings = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 384)
    present = torch.ones(1, 1, dtype=torch.bool)
    with torch.no_grad():
        plain, _ = net.encode(images, embeddings, present)
        shifted, _ = net.encode(images, embeddings, present, torch.tensor([[16.0, 3.0, -7.0]]))
    torch.testing.assert_close(plain, shifted)


def test_networks_saved_before_positions_existed_load_with_crop_positions(tmp_path):
    old = ModalityMAE(preset="test", positions="crop")
    config = {k: v for k, v in old.config.items() if k not in ("positions", "preset")}
    path = tmp_path / "old.ckpt"
    torch.save({"net_config": {**config, "preset": "test"},
                "state_dict": {f"net.{k}": v for k, v in old.state_dict().items()}}, path)
    loaded = ModalityMAE.from_checkpoint(path)
    assert loaded.config["positions"] == "crop"
    torch.testing.assert_close(loaded.pos_embed, old.pos_embed)
    assert ModalityMAE.from_hub_config({**config, "preset": "test"}).config["positions"] == "crop"


def test_bad_positions_value_is_named():
    with pytest.raises(ValueError, match="positions must be 'head' or 'crop', got 'world'"):
        ModalityMAE(preset="test", positions="world")

"""to_3tuple: MONAI's ensure_tuple_rep, with errors that name the argument."""

import numpy as np
import pytest

from brainfm_lightning.sizes import to_3tuple


@pytest.mark.parametrize("value, expected", [
    (16, (16, 16, 16)), ((8, 16, 32), (8, 16, 32)), ([4, 4, 2], (4, 4, 2)), (np.array([2, 3, 4]), (2, 3, 4)),
])
def test_accepts_an_int_or_three_positive_ints(value, expected):
    result = to_3tuple(value, "crop_size")
    assert result == expected and all(type(v) is int for v in result)


@pytest.mark.parametrize("value", [0, -4, (16, 16), (1, 2, 3, 4), (16, 0, 16), 2.5, (16.0, 16, 16), "64", None, True])
def test_rejects_anything_else_naming_the_argument(value):
    with pytest.raises(ValueError, match=r"crop_size must be a positive int or three positive ints, got"):
        to_3tuple(value, "crop_size")

"""Sizes given as an int or three ints (crop, image and patch sizes), as MONAI accepts them."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from monai.utils import ensure_tuple_rep


def to_3tuple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """Expand an int to three (MONAI's ``ensure_tuple_rep``) and check that all three are positive ints.

    ``ensure_tuple_rep`` alone neither names the argument nor rejects zero, negative or non-integer sizes.

    Args:
        value: An int, or a sequence of three ints.
        name: The argument's name, for the error message (e.g. ``crop_size``).

    Returns:
        The three sizes as Python ints.

    Raises:
        ValueError: ``value`` is not a positive int or three positive ints (the message names ``name``).
    """
    try:
        values = ensure_tuple_rep(value, 3)
    except ValueError as error:  # a sequence of another length
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}") from error
    if not all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]

"""Fixtures of the data tests: a writer of small random NIfTI volumes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def _write_nifti(
    path: Path, data: np.ndarray | None = None, spacing: tuple[float, float, float] = (2.0, 2.0, 2.0), seed: int = 0
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.random.default_rng(seed).random((16, 16, 16)).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)
    return path


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, data=None, spacing=(2, 2, 2), seed=0)``: ``data`` defaults to a random 16^3 volume."""
    return _write_nifti

"""Back from the model's grid to a scan's own: resampling onto a reference scan and writing NIfTI files like it.

A session is preprocessed onto one grid (RAS, ``spacing``, cropped to the head and padded to the crop size); every
step of that is an affine map, so the grid's 4x4 affine (carried by each whole-volume sample) says where each
voxel of a prediction lies in scanner space. Resampling onto the reference scan's own voxel grid (its shape and
affine, whatever its orientation) undoes reorientation, resampling, head crop and padding in one step; voxels of
the reference outside the predicted grid are background.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from brainfm_lightning.data.io import ScanError


def scan_grid(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """The voxel grid a scan is stored on: its 3D shape and 4x4 affine, as in the file (not reoriented)."""
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises many types for broken files
        raise ScanError(path, f"unreadable reference scan ({type(error).__name__}: {error})") from error
    return tuple(int(n) for n in image.shape[:3]), np.asarray(image.affine, dtype=np.float64)  # type: ignore[return-value]


def resample_to_grid(
    volume: torch.Tensor | np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    target_affine: np.ndarray,
    is_label: bool = True,
) -> np.ndarray:
    """Resample ``volume`` ``[C, X, Y, Z]`` with grid ``affine`` onto the grid ``(shape, target_affine)``.

    torchio (SimpleITK) does the resampling: nearest neighbour for label maps, linear for intensities and
    probabilities; target voxels outside the source grid are 0. Where the target voxel centres coincide with
    source voxel centres (the same spacing, or an integer ratio such as 3 mm slices on a 1 mm grid) a label map
    comes back exactly.

    Args:
        volume: ``[C, X, Y, Z]`` values on the source grid.
        affine: 4x4 affine of the source grid.
        shape: The target grid's 3D shape.
        target_affine: 4x4 affine of the target grid, any orientation.
        is_label: Nearest-neighbour resampling (label map, kept in its integer type) or linear (float32).

    Returns:
        ``[C, *shape]`` array on the target grid.
    """
    tensor = torch.as_tensor(np.asarray(volume))
    if tensor.ndim != 4:
        raise ValueError(f"expected a [C, X, Y, Z] volume, got shape {tuple(tensor.shape)}")
    target = (tuple(int(n) for n in shape), np.asarray(target_affine, dtype=np.float64))
    source_affine = np.asarray(affine, dtype=np.float64)
    if tensor.shape[1:] == target[0] and np.allclose(source_affine, target[1], atol=1e-5):
        return tensor.numpy().copy()
    if is_label:
        labels = tensor.to(torch.int16) if tensor.dtype.is_floating_point else tensor
        image: tio.Image = tio.LabelMap(tensor=labels, affine=source_affine)
    else:
        image = tio.ScalarImage(tensor=tensor.float(), affine=source_affine)
    with torch.random.fork_rng(devices=[]):  # torchio may touch torch's RNG
        resampled = tio.Resample(target)(image)  # SimpleITK fills the outside with 0
    data = resampled.data.numpy()
    return data.astype(tensor.numpy().dtype, copy=False) if is_label else data.astype(np.float32, copy=False)


def to_reference_space(
    volume: torch.Tensor | np.ndarray, affine: np.ndarray, reference: str | Path, is_label: bool = True
) -> np.ndarray:
    """``volume`` ``[C, X, Y, Z]`` on a preprocessing grid, resampled onto the reference scan's own voxel grid."""
    shape, target_affine = scan_grid(reference)
    return resample_to_grid(volume, affine, shape, target_affine, is_label=is_label)


def write_like(data: np.ndarray, reference: str | Path, path: str | Path, dtype: np.dtype | type = np.uint8) -> Path:
    """Write ``data`` as a NIfTI file that overlays the reference scan.

    ``data`` has the reference's 3D shape, or ``[C, *shape]`` for several maps; the file gets the reference's
    shape, affine, qform and sform (and their codes), units and voxel sizes. Label maps keep their integer values
    (``dtype`` uint8 by default, no scaling); float maps are written as float32.

    Returns:
        The path written (parents are created), atomically.
    """
    reference_image = nib.load(reference)
    shape = tuple(reference_image.shape[:3])
    array = np.asarray(data)
    if array.shape[-3:] != shape:
        raise ValueError(f"data of shape {array.shape} does not match the reference {reference} of shape {shape}")
    if array.ndim == 4:  # [C, X, Y, Z] -> NIfTI's [X, Y, Z, C]
        array = np.moveaxis(array, 0, -1)
    array = np.ascontiguousarray(array.astype(dtype, copy=False))
    if isinstance(reference_image, nib.Nifti1Image):  # NIfTI-2 too: the header's qform/sform and codes are kept
        header = reference_image.header.copy()
        header.set_slope_inter(np.nan, np.nan)  # the reference's intensity scaling does not apply to labels
        image = type(reference_image)(array, None, header)
    else:
        image = nib.Nifti1Image(array, reference_image.affine)
    image.set_data_dtype(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # under a temporary name, then renamed: a reader (or a second rank writing the same case) never sees half a file
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        nib.save(image, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path

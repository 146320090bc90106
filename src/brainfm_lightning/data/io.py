"""Reading one scan with nibabel, and the checks that keep bad input away from the model."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class ScanError(Exception):
    """A scan that cannot be used. ``str()`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple:
        # rebuild from (path, reason) when sent back from a worker process
        return (type(self), (self.path, self.reason))


def load_scan(
    path: str | Path, max_voxels: int = 512**3, max_anisotropy: float = 8.0, allow_constant: bool = False,
    canonical: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D NIfTI scan reoriented to RAS, after checking it is usable.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        max_voxels: Larger volumes are rejected (a guard against absurd inputs).
        max_anisotropy: Largest allowed ratio of the coarsest to the finest voxel spacing.
        allow_constant: Accept a constant volume (an empty label mask is one).
        canonical: Reorient to RAS (the one reorientation of preprocessing); ``False`` keeps the file's voxel order
            (native-space evaluation).

    Returns:
        ``(data, affine)``: float32 ``[X, Y, Z]`` and the 4x4 affine (RAS unless ``canonical`` is ``False``).

    Raises:
        ScanError: Missing, unsupported extension, unreadable or truncated, not 3D (a 4D scan with a single
            volume is accepted, as its first volume), too large, too anisotropic, non-finite voxels or constant.
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise ScanError(path, f"unsupported extension (expected one of {NIFTI_SUFFIXES})")
    if not path.is_file():
        raise ScanError(path, "file not found")
    try:
        image = nib.load(path)
        shape = image.shape
        if len(shape) > 3 and all(length == 1 for length in shape[3:]):  # e.g. [X, Y, Z, 1]: one volume
            image = image.slicer[(...,) + (0,) * (len(shape) - 3)]
        elif len(shape) > 3:
            raise ScanError(path, f"{len(shape)}D image of shape {shape} holds {int(np.prod(shape[3:]))} volumes; "
                                  "only a single 3D volume is accepted")
        elif len(shape) < 3:
            raise ScanError(path, f"{len(shape)}D image of shape {shape}; a 3D volume is needed")
        if int(np.prod(shape[:3])) > max_voxels:
            raise ScanError(path, f"volume of {shape[:3]} exceeds the limit of {max_voxels} voxels")
        zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
        if np.any(zooms <= 0) or zooms.max() / zooms.min() > max_anisotropy:
            spacing = tuple(round(float(z), 4) for z in zooms)
            raise ScanError(path, f"voxel spacing {spacing} mm is more anisotropic than {max_anisotropy}:1")
        image = nib.as_closest_canonical(image) if canonical else image
        # reorienting an LPS/LSA/... scan gives a flipped view (negative strides) that torch.from_numpy refuses
        data = np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32))
    except ScanError:
        raise
    except Exception as error:  # nibabel raises many types for broken or truncated files
        detail = " ".join(str(error).split())  # one line, whatever nibabel's message holds
        raise ScanError(path, f"unreadable or truncated file ({type(error).__name__}: {detail})") from error
    if not np.isfinite(data).all():
        raise ScanError(path, f"{int((~np.isfinite(data)).sum())} non-finite (NaN/Inf) voxels")
    if not allow_constant and float(data.max()) == float(data.min()):
        raise ScanError(path, f"constant volume (every voxel is {float(data.min())})")
    return data, image.affine


def load_label(path: str | Path, max_voxels: int = 512**3, max_anisotropy: float = 8.0,
               max_label: int = 255, canonical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load a label mask like :func:`load_scan` (constant masks allowed), checked and rounded to integers.

    Masks stored as floats (``0.999`` for 1 after a resampling or a scaled dtype) are rounded, not truncated.

    Returns:
        ``(mask, affine)``: uint8 ``[X, Y, Z]`` and the 4x4 affine (RAS unless ``canonical`` is ``False``).

    Raises:
        ScanError: As :func:`load_scan`, and for values more than 0.01 from an integer or outside
            ``[0, max_label]``.
    """
    data, affine = load_scan(path, max_voxels=max_voxels, max_anisotropy=max_anisotropy, allow_constant=True,
                             canonical=canonical)
    rounded = np.rint(data)
    off_integer = np.abs(data - rounded) > 0.01
    if off_integer.any():
        example = float(data[off_integer][0])
        raise ScanError(path, f"label mask holds non-integer values ({int(off_integer.sum())} voxels, e.g. "
                              f"{example:g}); expected integer labels")
    if rounded.min() < 0 or rounded.max() > max_label:
        raise ScanError(path, f"label values range over [{rounded.min():g}, {rounded.max():g}]; expected "
                              f"integers in [0, {max_label}]")
    return rounded.astype(np.uint8), affine

"""Embedded SYNTHETIC demo dataset: deformed MNI152 anatomy with random lesions, contrasts, bias and noise.

Nothing is downloaded: the anatomy comes from the MNI ICBM152 2009a templates that ship inside ``nilearn``.
Every output says it is synthetic (README.txt, NIfTI ``descrip``, the manifest's ``synthetic`` column).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib.util
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

FORMAT_VERSION = 2  # 2: lesions brighter than every tissue on T2 and PD
DESCRIP = b"SYNTHETIC brainfm demo"
MANIFEST_COLUMNS = ("subject", "session", "modality", "path", "lesion_volume_ml", "has_lesion", "synthetic")
# Mean intensity per tissue [CSF, GM, WM, lesion], arbitrary units. White-matter lesions show on every sequence, as
# MS and small-vessel lesions do: hyperintense on FLAIR, T2 and PD, hypointense on T1 (darker than GM and WM), so a
# segmenter without FLAIR still has evidence. FLAIR remains the clearest (CSF suppressed).
CONTRASTS: dict[str, tuple[float, float, float, float]] = {
    "T1": (250.0, 600.0, 900.0, 350.0),
    "T2": (1000.0, 550.0, 400.0, 1150.0),
    "PD": (850.0, 750.0, 600.0, 1000.0),
    "FLAIR": (100.0, 600.0, 450.0, 1000.0),
}
# Lesion kinds. ``ms``: the CONTRASTS' lesion column, an outlier on every sequence. ``heterotopia``: nodules of grey
# matter inside the white matter (grey-matter heterotopia), with the subject's grey-matter intensity on every
# sequence; no voxel is unusual on its own, only grey matter where white matter belongs.
LESION_KINDS = ("ms", "heterotopia")
_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_MNI_ORIGIN = np.array([-98.0, -134.0, -72.0])  # world mm of voxel (0, 0, 0) in the 1 mm templates
_README = """SYNTHETIC DATA - brainfm demo dataset. NOT real subjects, NOT for any clinical or scientific use.
Anatomy: MNI ICBM152 2009a nonlinear symmetric template tissue maps (Fonov et al., NeuroImage 2011;
copyright McConnell Brain Imaging Centre, MNI, McGill University) as shipped with nilearn, randomly deformed.
Lesions, contrasts, bias fields and noise are simulated. Build parameters: build.json. Index: manifest.csv.
"""


def template_path(tissue: str) -> Path:
    """Path of a bundled nilearn MNI152 template file (``tissue`` is "t1", "gm" or "wm"); raises if it is missing."""
    spec = importlib.util.find_spec("nilearn")  # locating the package does not import it (slow)
    root = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else Path("nilearn")
    path = root / "datasets" / "data" / _TEMPLATE.format(tissue)
    if not path.is_file():
        raise FileNotFoundError(f"MNI152 template shipped with nilearn not found: {path}")
    return path


def demo_affine(spacing: float) -> np.ndarray:
    """RAS affine of the demo volumes: diagonal ``spacing`` and the MNI template's origin."""
    return np.vstack([np.column_stack([np.eye(3) * spacing, _MNI_ORIGIN]), [0.0, 0.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=2)
def load_tissue_maps(spacing: float = 2.0) -> np.ndarray:
    """Load the MNI152 tissue maps resampled to ``spacing`` mm (cached, read-only).

    Args:
        spacing: Output voxel size in mm.

    Returns:
        float32 array (3, X, Y, Z) of [CSF, GM, WM] probabilities in [0, 1]; (3, 99, 117, 95) at 2 mm.
    """
    t1, gm, wm = (np.asarray(nib.load(template_path(t)).dataobj, dtype=np.float32) / 255.0 for t in ("t1", "gm", "wm"))
    csf = np.clip((t1 > 0.02).astype(np.float32) - gm - wm, 0.0, 1.0)  # T1 template is skull-stripped
    # Keep the first and last voxel centres, so the grid is exact whenever ``spacing`` divides (196, 232, 188).
    out = np.floor((np.array(t1.shape) - 1) / spacing).astype(int) + 1
    maps = np.stack([np.clip(ndimage.zoom(m, out / np.array(m.shape), order=1), 0, 1) for m in (csf, gm, wm)])
    maps.flags.writeable = False  # shared by the cache
    return maps


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], sd: float, grid: int = 4, dim: int = 3) -> np.ndarray:
    """Random (dim, *shape) field: Gaussian control points on a grid^3 lattice, cubic-spline upsampled."""
    ctrl = rng.normal(0.0, sd, size=(dim, grid, grid, grid))
    # Spline upsampling is separable, so per-axis weight matrices (n, grid) avoid a slow 3-D zoom.
    wx, wy, wz = (ndimage.zoom(np.eye(grid), (n / grid, 1), order=3, mode="nearest") for n in shape)
    return np.einsum("ia,jb,kc,dabc->dijk", wx, wy, wz, ctrl, optimize=True).astype(np.float32)


def _deform(maps: np.ndarray, rng: np.random.Generator, spacing: float) -> np.ndarray:
    """Apply one random global scaling + elastic warp (~2 mm) to every map in ``maps`` (C, X, Y, Z)."""
    shape = maps.shape[1:]
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    scale = rng.uniform(0.96, 1.04)
    coords = (np.indices(shape, dtype=np.float32) - centre[:, None, None, None]) / scale + centre[:, None, None, None]
    coords += _smooth_field(rng, shape, sd=2.0 / spacing)  # ~2 mm elastic displacement, in voxels
    return np.stack([ndimage.map_coordinates(m, coords, order=1, mode="constant", cval=0.0) for m in maps])


def _lesions(wm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0-3 smooth random ellipsoids (radii 2-5 voxels) centred where WM > 0.9; returns a probability map."""
    lesion = np.zeros_like(wm)
    candidates = np.flatnonzero(wm >= min(0.9, wm.max()))
    for _ in range(int(rng.integers(0, 4))):  # 0 lesions for about 1/4 of the subjects
        centre = np.array(np.unravel_index(rng.choice(candidates), wm.shape))
        radii = rng.uniform(2.0, 5.0, size=3)
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]  # random orientation
        lo, hi = np.maximum(centre - 7, 0), np.minimum(centre + 8, wm.shape)
        offsets = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij"), -1)
        dist = np.linalg.norm(((offsets - centre) @ rot) / radii, axis=-1)  # 1 on the ellipsoid surface
        blob = 1.0 / (1.0 + np.exp((dist - 1.0) * radii.mean() / 0.6))  # ~0.6-voxel soft edge
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        lesion[box] = np.maximum(lesion[box], blob)
    return lesion


def _synthesize(probs: np.ndarray, contrast: Sequence[float], rng: np.random.Generator,
                lesions: str = "ms") -> np.ndarray:
    """Image from (4, X, Y, Z) [CSF, GM, WM, lesion] probabilities with jitter, bias field and Rician noise."""
    means = np.asarray(contrast) * rng.normal(1.0, 0.04, size=4) * rng.uniform(0.9, 1.1)
    if lesions == "heterotopia":  # the same draws as "ms": only the lesion's intensity differs
        means[3] = means[1]
    image = np.tensordot(means.astype(np.float32), probs, axes=1)  # background stays 0
    log_bias = _smooth_field(rng, image.shape, sd=1.0, grid=3, dim=1)[0]  # multiplicative, scaled to max ±10-20%
    image *= np.exp(log_bias * (rng.uniform(0.1, 0.2) / (np.abs(log_bias).max() + 1e-6)))
    sigma = rng.uniform(0.02, 0.04) * means[2]
    inside = probs.sum(axis=0) > 0  # skull-stripped: background stays exactly 0 (and compresses well)
    noise = rng.normal(0.0, sigma, size=(2, int(inside.sum()))).astype(np.float32)
    image[inside] = np.sqrt((image[inside] + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
    return image.astype(np.float32)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header["descrip"] = DESCRIP
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def _build_subject(out_dir: Path, k: int, template: np.ndarray, seed: int, spacing: float,
                   modalities: Sequence[str], lesions: str = "ms") -> list[list[Any]]:
    """Simulate and write subject ``k`` (0-based); returns its manifest rows."""
    # Per-subject (and per-subject-modality) seed sequences keep subject k independent of n_subjects.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))
    csf, gm, wm = _deform(template, rng, spacing)
    lesion = _lesions(wm, rng) * np.clip(csf + gm + wm, 0.0, 1.0)  # keep lesions inside the brain
    probs = np.concatenate([np.stack([csf, gm, wm]) * (1.0 - lesion), lesion[None]])  # (4, X, Y, Z)
    n_present = int(rng.integers(1, len(modalities) + 1))
    present = sorted(rng.choice(len(modalities), size=n_present, replace=False).tolist())
    present = list(range(len(modalities))) if k == 0 else present[:1] if k == 1 else present
    subject, session_dir = f"sub-{k + 1:03d}", out_dir / f"sub-{k + 1:03d}" / "ses-01"
    session_dir.mkdir(parents=True, exist_ok=True)
    mask = (lesion > 0.5).astype(np.uint8)
    _save(mask, demo_affine(spacing), session_dir / "seg.nii.gz")
    for name in (modalities[j] for j in present):
        key = (k, 1 + list(CONTRASTS).index(name))
        image = _synthesize(probs, CONTRASTS[name], np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key)),
                            lesions)
        _save(image, demo_affine(spacing), session_dir / f"{name}.nii.gz")
    volume = f"{mask.sum() * spacing**3 / 1000.0:.3f}"
    return [[subject, "ses-01", name, f"{subject}/ses-01/{name}.nii.gz", volume, int(mask.any()), 1]
            for name in sorted([modalities[j] for j in present] + ["seg"])]


def _params(n_subjects: int, seed: int, spacing: float, modalities: Sequence[str], lesions: str) -> dict[str, Any]:
    params = {"format_version": FORMAT_VERSION, "n_subjects": int(n_subjects), "seed": int(seed),
              "spacing": float(spacing), "modalities": list(modalities)}
    return params if lesions == "ms" else params | {"lesions": lesions}  # ms builds keep their build.json


def build_demo_dataset(out_dir: str | Path, n_subjects: int = 24, seed: int = 0, spacing: float = 2.0,
                       modalities: Sequence[str] = ("T1", "T2", "PD", "FLAIR"), overwrite: bool = False,
                       lesions: str = "ms") -> Path:
    """Write the SYNTHETIC demo dataset (``sub-XXX/ses-01/<modality>.nii.gz`` + ``seg.nii.gz``) into ``out_dir``.

    Subject k only depends on ``seed`` and k (not on ``n_subjects``). Subject 1 always has every modality and
    subject 2 exactly one, so these cases (and every modality) are present; the others get a random non-empty subset.

    Args:
        out_dir: Output folder (created if needed).
        n_subjects: Number of subjects, one session each.
        seed: Random seed.
        spacing: Isotropic voxel size in mm.
        modalities: Modalities to simulate, a subset of ``CONTRASTS``.
        overwrite: Replace an existing demo dataset (its manifest, build.json, README and ``sub-*`` folders).
        lesions: Lesion kind (``LESION_KINDS``): ``ms`` (outliers on every sequence) or ``heterotopia`` (grey
            matter inside the white matter). With the same seed both kinds have the same subjects and masks.

    Returns:
        Path of the written manifest, ``out_dir / "manifest.csv"``.

    Raises:
        ValueError: Unknown or repeated modality, unknown lesion kind, ``n_subjects < 1`` or ``spacing <= 0``.
        FileExistsError: ``out_dir`` already holds a manifest and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    unknown = [m for m in modalities if m not in CONTRASTS]
    if unknown or not modalities or len(set(modalities)) != len(modalities) or n_subjects < 1 or spacing <= 0:
        raise ValueError(f"bad demo parameters (unknown modalities {unknown}; supported: {list(CONTRASTS)})")
    if lesions not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {lesions!r}; supported: {list(LESION_KINDS)}")
    manifest = out_dir / "manifest.csv"
    if manifest.exists() and not overwrite:
        raise FileExistsError(f"{manifest} exists; pass overwrite=True to rebuild")
    if overwrite and out_dir.is_dir():
        for old in [*out_dir.glob("sub-*"), manifest, out_dir / "build.json", out_dir / "README.txt"]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "README.txt").write_text(_README)
    template = load_tissue_maps(spacing)  # resampled once per build
    workers = min(n_subjects, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=min(workers, 8)) as pool:  # numpy/scipy/zlib release the GIL
        jobs = [pool.submit(_build_subject, out_dir, k, template, seed, spacing, modalities, lesions)
                for k in range(n_subjects)]
        rows = [row for job in jobs for row in job.result()]
    params = _params(n_subjects, seed, spacing, modalities, lesions)
    (out_dir / "build.json").write_text(json.dumps(params, indent=2) + "\n")
    with open(manifest, "w", newline="") as f:  # written last: a manifest means a complete dataset
        csv.writer(f).writerows([MANIFEST_COLUMNS, *rows])
    return manifest


def _is_current(out_dir: Path, params: dict[str, Any]) -> bool:
    try:
        return (out_dir / "manifest.csv").is_file() and json.loads((out_dir / "build.json").read_text()) == params
    except (OSError, ValueError):
        return False


def _is_demo_folder(out_dir: Path) -> bool:
    """True if ``out_dir`` is missing, empty or written by :func:`build_demo_dataset` (so safe to replace)."""
    if not out_dir.is_dir():
        return not out_dir.exists()
    readme = out_dir / "README.txt"
    return not any(out_dir.iterdir()) or (readme.is_file() and readme.read_text().startswith(_README[:20]))


def ensure_demo_dataset(out_dir: str | Path, *, n_subjects: int = 24, seed: int = 0, spacing: float = 2.0,
                        modalities: Sequence[str] = ("T1", "T2", "PD", "FLAIR"), lesions: str = "ms") -> Path:
    """Build the demo dataset unless ``out_dir`` already holds one with the same parameters (per build.json).

    Safe under concurrent calls: each caller builds into a temporary sibling folder and renames it into place; a
    caller that loses the race uses the winner's copy. A stale demo build (other parameters) is replaced.

    Args:
        out_dir: Dataset folder; it must be missing, empty or a previous demo build.
        n_subjects: As in :func:`build_demo_dataset`.
        seed: As in :func:`build_demo_dataset`.
        spacing: As in :func:`build_demo_dataset`.
        modalities: As in :func:`build_demo_dataset`.
        lesions: As in :func:`build_demo_dataset`.

    Returns:
        Path of the manifest, ``out_dir / "manifest.csv"``.

    Raises:
        FileExistsError: ``out_dir`` holds something other than a demo dataset.
    """
    out_dir, params = Path(out_dir), _params(n_subjects, seed, spacing, modalities, lesions)
    manifest = out_dir / "manifest.csv"
    if _is_current(out_dir, params):
        return manifest
    if not _is_demo_folder(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a brainfm demo dataset; refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        build_demo_dataset(tmp, n_subjects=n_subjects, seed=seed, spacing=spacing, modalities=modalities,
                           lesions=lesions)
        os.chmod(tmp, 0o755)  # mkdtemp folders are private
        for _ in range(5):
            if _is_current(out_dir, params):  # another process won the race
                return manifest
            try:
                os.rename(tmp, out_dir)  # atomic; fails if out_dir exists and is not empty
                return manifest
            except OSError:
                if _is_demo_folder(out_dir) and not _is_current(out_dir, params):  # stale build: move it aside
                    stale = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex}"
                    with contextlib.suppress(OSError):
                        os.rename(out_dir, stale)
                    shutil.rmtree(stale, ignore_errors=True)
        raise RuntimeError(f"could not move the demo dataset into {out_dir}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""The prepared cache: each session's deterministic preprocessing stored once, read back one crop at a time.

Layout: ``<root>/<key>/settings.json`` and, per session, ``<root>/<key>/<hh>/<name>.images.npy`` (``[M, X, Y, Z]``
on the session's shared grid, RAS, resampled and foreground z-scored), ``<name>.label.npy`` (uint8
``[1, X, Y, Z]``, when the session has a readable label mask) and ``<name>.json`` (modality names, affine,
per-scan background, the problems met while preparing). ``<key>`` hashes every setting that changes the stored
arrays (:meth:`PreparedCache.settings`), so changing one gives a new folder and an old one is never read;
``<name>`` hashes the session id and its files' paths, sizes and modification times, so a changed scan is
prepared again. Every file is written under a temporary name and renamed into place, the JSON last: a session is
prepared exactly when its JSON and the arrays it names exist.

float16 is the default storage: z-scored intensities need no more than its 3 significant digits, and it halves the
disk (FOMO25 at 1 mm: ~0.9 TB instead of ~1.8 TB) and the pages read per crop.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from brainfm_lightning.data.manifest import Problem, Session

FORMAT_VERSION = 4  # 2: sessions are cropped to the head's bounding box; 3-4: Otsu head foreground
NORMALIZATION = "zscore-otsu-head"  # what SessionPreprocessor.to_grid does; part of the key
TEMP_MARK = ".tmp-"
CACHE_DTYPES = ("float16", "float32")


@dataclass
class PreparedSession:
    """One session read back from the cache; ``images`` and ``label`` are read-only memory maps.

    Attributes:
        modalities: Names of the scans kept, in manifest order (bad scans left out).
        images: float ``[M, X, Y, Z]``, or ``None`` when no scan was usable.
        background: float32 ``[M]``: each scan's minimum, the value crops are padded with.
        affine: 4x4 RAS affine of the shared grid.
        label: uint8 ``[1, X, Y, Z]`` or ``None``.
        problems: Bad scans met while preparing (``label_problems`` for the label mask).
        label_problems: At most one: why the label mask could not be used.
    """

    modalities: list[str]
    images: np.ndarray | None
    background: np.ndarray
    affine: np.ndarray
    label: np.ndarray | None
    problems: list[Problem]
    label_problems: list[Problem]


class PreparedCache:
    """The cache folder of one set of preprocessing settings, ``<root>/<key>/``.

    Args:
        root: Where caches live; each settings key gets its own subfolder.
        spacing: Voxel spacing in mm the sessions are resampled to, or ``None`` (as in the datamodule).
        max_voxels: Passed to :func:`~brainfm_lightning.data.io.load_scan` while preparing.
        max_anisotropy: Passed to :func:`~brainfm_lightning.data.io.load_scan` while preparing.
        dtype: Storage type of the images, ``float16`` or ``float32``.
    """

    def __init__(
        self,
        root: str | Path,
        spacing: float | None = None,
        max_voxels: int = 512**3,
        max_anisotropy: float = 8.0,
        dtype: str = "float16",
    ) -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
        if spacing is not None and spacing <= 0:
            raise ValueError(f"spacing must be positive, got {spacing}")
        self.root = Path(root)
        self.spacing = None if spacing is None else float(spacing)
        self.max_voxels = int(max_voxels)
        self.max_anisotropy = float(max_anisotropy)
        self.dtype = dtype
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()
        self.folder = self.root / digest[:16]
        self._names: dict[tuple[str, ...], str] = {}  # stat()s once per session and process, not per sample

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes the stored arrays (crop size and flips are applied at load time)."""
        return {"format": FORMAT_VERSION, "normalization": NORMALIZATION, "spacing": self.spacing,
                "max_voxels": self.max_voxels, "max_anisotropy": self.max_anisotropy, "dtype": self.dtype}

    def meta_path(self, session: Session) -> Path:
        """The session's JSON, whose presence marks it as prepared; the arrays sit next to it.

        The name is worked out once per session and :class:`PreparedCache` object: a scan that changes during a
        run is noticed by the next run (or a new object), not by the running one.
        """
        files = (session.session_id, *(f"{s.modality}={s.path}" for s in session.scans), str(session.label_path))
        name = self._names.get(files)
        if name is None:
            name = self._names[files] = session_file_name(session)
        return self.folder / name[-2:] / f"{name}.json"

    def is_prepared(self, session: Session) -> bool:
        """Whether ``session`` is in the cache (its JSON record is there and reads)."""
        return self.read(session) is not None

    def read(self, session: Session) -> PreparedSession | None:
        """The prepared session, or ``None`` when it is not (completely) in the cache for these settings."""
        meta_path = self.meta_path(session)
        try:
            meta = json.loads(meta_path.read_text())
            images = np.load(meta_path.parent / meta["images"], mmap_mode="r") if meta["images"] else None
            label = np.load(meta_path.parent / meta["label"], mmap_mode="r") if meta["label"] else None
        except (OSError, ValueError, KeyError):  # missing, half-deleted or foreign files: not prepared
            return None
        problems = [Problem(Path(p["path"]), p["reason"]) for p in meta["problems"]]
        return PreparedSession(
            modalities=list(meta["modalities"]), images=images, background=np.asarray(meta["background"], np.float32),
            affine=np.asarray(meta["affine"]), label=label, problems=problems,
            label_problems=[Problem(Path(p["path"]), p["reason"]) for p in meta["label_problems"]])

    def write(
        self,
        session: Session,
        modalities: list[str],
        images: np.ndarray | None,
        affine: np.ndarray,
        label: np.ndarray | None,
        problems: list[Problem],
        label_problems: list[Problem],
    ) -> Path:
        """Store one prepared session atomically (arrays first, the JSON that marks it done last).

        Args:
            session: The session; names the files.
            modalities: Names of the ``M`` scans in ``images``.
            images: float ``[M, X, Y, Z]`` on the shared grid, or ``None`` if no scan was usable.
            affine: 4x4 affine of the grid.
            label: ``[1, X, Y, Z]`` mask (stored as uint8) or ``None``.
            problems: Bad image scans, kept so that reading applies the bad-scan policy as the NIfTI path does.
            label_problems: A bad label mask.

        Returns:
            Path of the session's JSON.
        """
        meta_path = self.meta_path(session)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_settings()
        stem = meta_path.name.removesuffix(".json")
        meta: dict[str, Any] = {"session_id": session.session_id, "modalities": modalities, "images": None,
                                "label": None, "background": [], "affine": np.asarray(affine).tolist(),
                                "problems": [_as_dict(p) for p in problems],
                                "label_problems": [_as_dict(p) for p in label_problems]}
        if images is not None:
            stored = np.ascontiguousarray(images, dtype=self.dtype)
            meta["background"] = stored.reshape(len(stored), -1).min(axis=1).astype(float).tolist()
            meta["images"] = f"{stem}.images.npy"
            _atomic_write(meta_path.parent / meta["images"], lambda handle: np.save(handle, stored))
        if label is not None:
            meta["label"] = f"{stem}.label.npy"
            mask = np.ascontiguousarray(label, dtype=np.uint8)
            _atomic_write(meta_path.parent / meta["label"], lambda handle: np.save(handle, mask))
        _atomic_write(meta_path, lambda handle: handle.write(json.dumps(meta, indent=1).encode()))
        return meta_path

    def temp_files(self) -> Iterator[Path]:
        """Leftovers of interrupted writes (never read as data)."""
        return self.folder.rglob(f"*{TEMP_MARK}*") if self.folder.is_dir() else iter(())

    def _write_settings(self) -> None:
        path = self.folder / "settings.json"
        if not path.is_file():
            _atomic_write(path, lambda handle: handle.write(json.dumps(self.settings, indent=1).encode()))


def session_file_name(session: Session) -> str:
    """``<readable session id>-<hash>``: the hash covers the id, modalities and each file's path, size and mtime."""
    digest = hashlib.sha256(session.session_id.encode())
    files = [(scan.modality, scan.path) for scan in session.scans]
    files += [("__label__", session.label_path)] if session.label_path is not None else []
    for name, path in files:
        absolute = os.path.abspath(path)
        try:
            status = os.stat(absolute)
            stamp = f"{status.st_size}:{status.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"\0{name}\0{absolute}\0{stamp}".encode())
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", session.session_id)[:80]
    return f"{readable}-{digest.hexdigest()[:20]}"


def _as_dict(problem: Problem) -> dict[str, str]:
    return {"path": str(problem.path), "reason": problem.reason}


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    # a temporary name in the same folder, then os.replace: readers see the old file or the whole new one
    temp = path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(temp, "wb") as handle:
            write(handle)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()

"""Map-style dataset of sessions, with the bad-scan policy, and the padding collation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from brainfm_lightning.data.cache import PreparedCache, PreparedSession
from brainfm_lightning.data.io import ScanError, load_label, load_scan
from brainfm_lightning.data.manifest import Session
from brainfm_lightning.data.preprocess import SessionPreprocessor

log = logging.getLogger(__name__)
BadScanPolicy = Literal["skip", "error"]


class SessionDataset(Dataset):
    """Loads and preprocesses whole sessions.

    A bad scan (see :func:`load_scan`) is skipped with a warning naming the file (``policy="skip"``) or raises
    :class:`ScanError` at once (``policy="error"``); a session with no usable scan left, or with a bad label mask
    when ``with_label``, yields ``None``, which :func:`pad_collate` drops and counts. Each sample's
    ``skipped_scans`` says how many of its scans were skipped; :attr:`skipped_scans` and
    :attr:`skipped_sessions` count them for this process (each DataLoader worker holds its own copy).

    With a ``cache``, a session prepared for the cache's settings (``brainfm data prepare``) is read from it: only
    the crop window of its memory-mapped arrays, then the same crop, flip and random draws as the NIfTI path, so
    the sample equals the uncached one up to the cache's float16 rounding; bad scans recorded while preparing
    follow ``policy`` as above. A session not in the cache (never prepared, or a scan changed since) falls back
    to the NIfTI path, with one warning per process.

    Args:
        sessions: The sessions to serve.
        preprocessor: Turns loaded scans into a ``[M, D, H, W]`` tensor.
        policy: ``"skip"`` or ``"error"``.
        with_label: Also load each session's label mask (sessions without one are an error).
        seed: Base seed of the per-sample random generator (crop offsets, flips).
        max_voxels: Passed to :func:`load_scan`.
        max_anisotropy: Passed to :func:`load_scan`.
        cache: The prepared cache to read sessions from, or ``None``.
        whole_volume: Serve each session's whole preprocessed volume (evaluation; see
            :meth:`SessionPreprocessor.pad_to_crop`) with its geometry: ``affine`` (4x4 float64 array of the grid),
            ``reference`` (path of the session's first usable scan, whose grid predictions are mapped back onto) and
            ``label_path``; no crop, no flip.
    """

    def __init__(
        self,
        sessions: Sequence[Session],
        preprocessor: SessionPreprocessor,
        policy: BadScanPolicy = "skip",
        with_label: bool = False,
        seed: int = 0,
        max_voxels: int = 512**3,
        max_anisotropy: float = 8.0,
        cache: PreparedCache | None = None,
        whole_volume: bool = False,
    ) -> None:
        if policy not in ("skip", "error"):
            raise ValueError(f"bad-scan policy must be 'skip' or 'error', got {policy!r}")
        self.sessions = list(sessions)
        self.preprocessor = preprocessor
        self.policy = policy
        self.with_label = with_label
        self.seed = seed
        self.load_kwargs = dict(max_voxels=max_voxels, max_anisotropy=max_anisotropy)
        self.cache = cache
        self.whole_volume = whole_volume
        self.skipped_scans = 0
        self.skipped_sessions = 0
        self.has_warned_uncached = False

    def __len__(self) -> int:
        return len(self.sessions)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        """``key`` is an index, or ``(epoch, index)`` from :class:`EpochSampler` so random crops vary per epoch."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        session = self.sessions[index]
        if self.cache is not None:
            prepared = self.cache.read(session)
            if prepared is not None:
                return self._from_cache(session, prepared, epoch, index)
            if not self.has_warned_uncached:
                self.has_warned_uncached = True
                log.warning("session %s is not in the prepared cache %s; reading NIfTI files (run brainfm data "
                            "prepare; further misses in this process are not reported)", session.session_id,
                            self.cache.folder)
        volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for scan in session.scans:
            try:
                volumes[scan.modality] = load_scan(scan.path, **self.load_kwargs)
            except ScanError as error:
                if self.policy == "error":
                    raise
                self.skipped_scans += 1
                log.warning("skipping bad scan of %s: %s", session.session_id, error)
        label = None
        if volumes and self.with_label:
            if session.label_path is None:
                raise ScanError(session.scans[0].path, f"session {session.session_id} has no label mask row")
            try:
                label = load_label(session.label_path, **self.load_kwargs)
            except ScanError as error:
                if self.policy == "error":
                    raise
                log.warning("skipping session %s: bad label mask: %s", session.session_id, error)
                volumes.clear()
        if not volumes:
            self.skipped_sessions += 1
            log.warning("skipping session %s: no usable scan left", session.session_id)
            return None
        if self.whole_volume:
            grid, grid_label, affine = self.preprocessor.to_grid(volumes, label)
            images, label_tensor, affine = self.preprocessor.pad_to_crop(
                grid.numpy(), grid_label.numpy() if grid_label is not None else None, affine)
            return self._sample(session, images, list(volumes), label_tensor, (epoch, index), affine)
        rng = np.random.default_rng([self.seed, epoch, index])
        images, label_tensor, offset = self.preprocessor(volumes, label=label, rng=rng)
        return self._sample(session, images, list(volumes), label_tensor, (epoch, index), head_offset=offset)

    def _from_cache(self, session: Session, prepared: PreparedSession, epoch: int, index: int) -> dict[str, Any] | None:
        for problem in prepared.problems:  # recorded by prepare under "skip"; applied as when loading them
            if self.policy == "error":
                raise ScanError(problem.path, problem.reason)
            self.skipped_scans += 1
            log.warning("skipping bad scan of %s: %s", session.session_id, problem)
        modalities = prepared.modalities
        if modalities and self.with_label:
            if session.label_path is None:
                raise ScanError(session.scans[0].path, f"session {session.session_id} has no label mask row")
            for problem in prepared.label_problems:
                if self.policy == "error":
                    raise ScanError(problem.path, problem.reason)
                log.warning("skipping session %s: bad label mask: %s", session.session_id, problem)
                modalities = []
        if not modalities or prepared.images is None:
            self.skipped_sessions += 1
            log.warning("skipping session %s: no usable scan left", session.session_id)
            return None
        label = prepared.label if self.with_label else None
        if self.whole_volume:
            images, label_tensor, affine = self.preprocessor.pad_to_crop(prepared.images, label, prepared.affine,
                                                                         prepared.background)
            return self._sample(session, images, modalities, label_tensor, (epoch, index), affine)
        rng = np.random.default_rng([self.seed, epoch, index])
        images, label_tensor, offset = self.preprocessor.crop_and_flip(prepared.images, label, prepared.background,
                                                                       rng)
        return self._sample(session, images, modalities, label_tensor, (epoch, index), head_offset=offset)

    def _sample(
        self, session: Session, images: torch.Tensor, modalities: list[str], label: torch.Tensor | None,
        key: tuple[int, int], affine: np.ndarray | None = None, head_offset: np.ndarray | None = None,
    ) -> dict[str, Any]:
        if not np.isfinite(images.numpy()).all():  # the last line of defence: nothing non-finite reaches the model
            raise ScanError(session.scans[0].path, f"preprocessing of {session.session_id} produced non-finite values")
        sample: dict[str, Any] = {
            "images": images,
            "modalities": modalities,
            "session_id": session.session_id,
            "targets": dict(session.targets),
            "skipped_scans": len(session.scans) - len(modalities),
            "sample_key": key,  # (epoch, index): seeds what is drawn for this sample later (AugmentingCollate)
            # where the crop's centre lies from the head's (ModalityMAE positions: head); a whole volume is the
            # head's bounding box padded evenly, centred on it to half a voxel
            "head_offset": torch.as_tensor(np.zeros(3) if head_offset is None else head_offset, dtype=torch.float32),
        }
        if label is not None:
            sample["label"] = label
        if affine is not None:  # whole volumes: where the grid lies, and the scan it maps back onto
            sample["affine"] = np.asarray(affine, dtype=np.float64)
            sample["reference"] = str(next(s.path for s in session.scans if s.modality == modalities[0]))
            sample["label_path"] = str(session.label_path) if session.label_path is not None else None
        return sample


def pad_collate(samples: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Batch sessions with different numbers of modalities by padding to the most in the batch.

    Returns:
        ``images`` float ``[B, M, D, H, W]`` (padded slots are zero), ``present`` bool ``[B, M]``,
        ``modalities`` list of ``B`` lists of ``M`` names (``""`` for padding), ``session_ids``, ``targets``,
        ``head_offset`` float ``[B, 3]`` (each crop's centre minus its head's centre, in voxels; zero for samples
        without one), ``label`` ``[B, 1, D, H, W]`` when the samples have one, ``skipped_scans`` (int: bad scans
        left out of the kept sessions) and ``skipped_sessions`` (int: sessions dropped as ``None``); ``None`` if every
        sample was dropped. Whole-volume samples add ``affines`` (list of 4x4 float64 arrays), ``references`` and
        ``label_paths`` (lists of str or ``None``); they must share one shape (batch size 1 for whole volumes of
        different sizes).

    Raises:
        ValueError: Samples of different spatial shapes.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        return None
    most = max(len(s["modalities"]) for s in kept)
    spatial = kept[0]["images"].shape[1:]
    shapes = {tuple(s["images"].shape[1:]) for s in kept}
    if len(shapes) > 1:
        raise ValueError(f"sessions {[s['session_id'] for s in kept]} have different shapes {sorted(shapes)}; "
                         "whole volumes of different sizes need batch_size 1")
    images = torch.zeros(len(kept), most, *spatial)
    present = torch.zeros(len(kept), most, dtype=torch.bool)
    for row, sample in enumerate(kept):
        count = len(sample["modalities"])
        images[row, :count] = sample["images"]
        present[row, :count] = True
    batch: dict[str, Any] = {
        "images": images,
        "present": present,
        "modalities": [s["modalities"] + [""] * (most - len(s["modalities"])) for s in kept],
        "session_ids": [s["session_id"] for s in kept],
        "targets": [s["targets"] for s in kept],
        "head_offset": torch.stack([s.get("head_offset", torch.zeros(3)) for s in kept]).float(),
        "skipped_scans": sum(s.get("skipped_scans", 0) for s in kept),
        "skipped_sessions": len(samples) - len(kept),
    }
    if "label" in kept[0]:
        batch["label"] = torch.stack([s["label"] for s in kept])
    if "affine" in kept[0]:  # numpy, not tensors: they stay on the CPU in float64 when the batch moves
        batch.update(affines=[s["affine"] for s in kept], references=[s["reference"] for s in kept],
                     label_paths=[s["label_path"] for s in kept])
    return batch

"""Folder-tree datasets indexed into :class:`Session` objects without opening a single image.

Two layouts, walked with ``os.scandir`` (one listing per folder, no ``stat`` per file), so a FOMO-sized tree
(13,900 sessions, 60,529 files) indexes in seconds:

- ``fomo25``: ``ROOT/sub_*/ses_*/<modality>.nii.gz`` (FOMO-60K). The modality is the file stem (``t1``,
  ``flair``, ``dwi_b1000``). A stem with a ``seg``/``label`` word is the session's label mask; one with a
  ``mask`` word (``brainmask``, ``t1_mask``) is not an image and is left out.
- ``bids``: ``ROOT/sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]``. The modality is the BIDS suffix (``T1w``, ``T2w``,
  ``FLAIR``, ``PDw``, ``T2starw``, ...). A subject without ``ses-*`` folders gets session :data:`SESSIONLESS`.
  ``dseg``/``roi``/``label``/``seg`` files are the label mask; ``mask``/``defacemask``/``probseg`` are left out.

Entries are visited in natural order (``run-2`` before ``run-10``); when one session holds the same modality
twice (``acq-``/``run-`` variants), the first file is kept and the others are reported.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from brainfm_lightning.data.io import NIFTI_SUFFIXES
from brainfm_lightning.data.manifest import Problem, Scan, Session

log = logging.getLogger(__name__)
LAYOUTS = ("fomo25", "bids")
SESSIONLESS = "ses-1"  # session name given to BIDS subjects that have no ses-* folders
SIDECAR_SUFFIXES = (".json", ".bval", ".bvec", ".tsv", ".txt", ".md")  # metadata next to images, silently ignored
FOMO_LABEL_WORDS = frozenset({"seg", "label", "labels", "segmentation"})
FOMO_MASK_WORDS = frozenset({"mask", "brainmask"})
BIDS_LABEL_SUFFIXES = frozenset({"dseg", "roi", "label", "seg"})
BIDS_MASK_SUFFIXES = frozenset({"mask", "defacemask", "probseg"})
# what a file is: ("image", modality), ("label", ""), ("skip", "") or ("bad", reason)
Kind = tuple[str, str]


def index_fomo25(root: str | Path, problems: list[Problem] | None = None) -> list[Session]:
    """Index a FOMO-60K tree ``ROOT/sub_*/ses_*/<modality>.nii.gz``.

    Args:
        root: The dataset folder.
        problems: Where to report unsupported files, duplicate modalities and empty sessions; ``None`` logs a
            warning for each instead.

    Returns:
        The sessions with at least one image, in natural order of subject and session.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    sessions = []
    for subject in _subfolders(_require_root(root), "sub_"):
        for visit in _subfolders(subject.path, "ses_"):
            session = _read_session(subject.name, visit.name, visit.path, _fomo_kind, problems)
            if session is not None:
                sessions.append(session)
    return sessions


def index_bids(root: str | Path, problems: list[Problem] | None = None) -> list[Session]:
    """Index the anatomical scans of a BIDS tree ``ROOT/sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]``.

    Args:
        root: The BIDS dataset folder (``derivatives/``, ``sourcedata/`` and non-``anat`` folders are ignored).
        problems: As in :func:`index_fomo25`.

    Returns:
        The sessions with at least one anatomical image; sessionless subjects get session :data:`SESSIONLESS`.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    sessions = []
    for subject in _subfolders(_require_root(root), "sub-"):
        visits = [(visit.name, visit.path) for visit in _subfolders(subject.path, "ses-")]
        if not visits:
            visits = [(SESSIONLESS, subject.path)]
        for name, path in visits:
            anat = os.path.join(path, "anat")
            if os.path.isdir(anat):  # a session with func/dwi only has nothing for us, and is no defect
                session = _read_session(subject.name, name, anat, _bids_kind, problems)
                if session is not None:
                    sessions.append(session)
    return sessions


INDEXERS: dict[str, Callable[..., list[Session]]] = {"fomo25": index_fomo25, "bids": index_bids}


def index_dataset(root: str | Path, layout: str) -> list[Session]:
    """Index a folder tree for training: like the ``index_*`` functions, but an empty result is an error.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: Unknown ``layout``, or no session with an image under ``root``.
    """
    if layout not in INDEXERS:
        raise ValueError(f"unknown dataset layout {layout!r}; expected one of {LAYOUTS}")
    sessions = INDEXERS[layout](root)
    if not sessions:
        pattern = "sub_*/ses_*/*.nii.gz" if layout == "fomo25" else "sub-*/[ses-*/]anat/*.nii[.gz]"
        raise ValueError(f"no {layout} sessions under {root} (expected {pattern})")
    return sessions


def detect_layout(path: str | Path) -> str:
    """``manifest`` for a ``.csv`` file, ``bids`` for a folder with ``sub-*`` folders, ``fomo25`` with ``sub_*``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Neither a ``.csv`` file nor a folder of either layout.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise ValueError(f"{path}: not a manifest (.csv) nor a dataset folder")
    with os.scandir(path) as entries:
        names = [entry.name for entry in entries if entry.is_dir()]
    if any(name.startswith("sub-") for name in names):
        return "bids"
    if any(name.startswith("sub_") for name in names):
        return "fomo25"
    raise ValueError(f"{path}: cannot tell the layout: no sub-* (BIDS) or sub_* (FOMO) folders; pass --layout")


def _require_root(root: str | Path) -> str:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root not found: {root}")
    return os.fspath(root)


def _natural_key(name: str) -> list[str | int]:
    # re.split with a group alternates text and digits, so keys compare position by position
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _listing(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: _natural_key(e.name))


def _subfolders(folder: str, prefix: str) -> list[os.DirEntry]:
    return [entry for entry in _listing(folder) if entry.name.startswith(prefix) and entry.is_dir()]


def _nifti_stem(name: str) -> str | None:
    return next((name[: -len(suffix)] for suffix in NIFTI_SUFFIXES if name.endswith(suffix)), None)


def _fomo_kind(stem: str) -> Kind:
    words = set(re.split(r"[_\-.]", stem.lower()))
    if words & FOMO_MASK_WORDS:
        return "skip", ""
    return ("label", "") if words & FOMO_LABEL_WORDS else ("image", stem)


def _bids_kind(stem: str) -> Kind:
    if "_" not in stem:
        return "bad", "not a BIDS file name (sub-<label>[_<entity>-<value>...]_<suffix>.nii[.gz]); not indexed"
    suffix = stem.rsplit("_", 1)[1]
    if suffix.lower() in BIDS_MASK_SUFFIXES:
        return "skip", ""
    return ("label", "") if suffix.lower() in BIDS_LABEL_SUFFIXES else ("image", suffix)


def _read_session(
    subject: str, session: str, folder: str, kind_of: Callable[[str], Kind], problems: list[Problem] | None
) -> Session | None:
    """One session folder's files as a :class:`Session`, or ``None`` (reported) when it holds no image."""
    scans: dict[str, Scan] = {}
    label_path: Path | None = None
    for entry in _listing(folder):
        if entry.is_dir() or entry.name.endswith(SIDECAR_SUFFIXES):
            continue
        path = Path(entry.path)
        stem = _nifti_stem(entry.name)
        kind, value = kind_of(stem) if stem is not None else ("bad", "")
        if kind == "bad":
            reason = value or f"unsupported extension (expected one of {NIFTI_SUFFIXES}); not indexed"
            _report(problems, Problem(path, reason))
        elif kind == "label" and label_path is not None:
            _report(problems, Problem(path, f"a second label mask in {subject}/{session}; {label_path.name} is used"))
        elif kind == "label":
            label_path = path
        elif kind == "image" and value in scans:
            _report(problems, Problem(path, f"duplicate modality {value!r} in session {subject}/{session}; "
                                            f"{scans[value].path.name} is used and this file is ignored"))
        elif kind == "image":
            scans[value] = Scan(value, path)
    if not scans:
        _report(problems, Problem(Path(folder), f"empty session {subject}/{session}: no image file"))
        return None
    return Session(subject, session, list(scans.values()), label_path=label_path)


def _report(problems: list[Problem] | None, problem: Problem) -> None:
    if problems is None:
        log.warning("%s", problem)
    else:
        problems.append(problem)

"""``brainfm data check``: read every scan of a dataset and report each problem with the file it concerns."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from brainfm_lightning.data.adapters import INDEXERS, LAYOUTS, detect_layout
from brainfm_lightning.data.io import ScanError, load_label, load_scan
from brainfm_lightning.data.manifest import ManifestError, Problem, Session, read_manifest
from brainfm_lightning.data.preprocess import SessionPreprocessor

CHECK_LAYOUTS = ("auto", "manifest", *LAYOUTS)


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    Attributes:
        layout: The layout the dataset was read as.
        sessions: Sessions with at least one image row or file.
        scans: Image files read (label masks not included).
        labels: Label masks read.
        problems: Every problem, in the order found.
    """

    layout: str
    sessions: int = 0
    scans: int = 0
    labels: int = 0
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        """One line: sessions, scans and label masks checked, and the number of problems."""
        return (f"checked {self.sessions} sessions, {self.scans} scans and {self.labels} label masks "
                f"({self.layout} layout): {len(self.problems)} problem(s)")


def check_dataset(
    path: str | Path,
    layout: str = "auto",
    max_voxels: int = 512**3,
    max_anisotropy: float = 8.0,
    workers: int = 1,
    on_problem: Callable[[Problem], None] | None = None,
    spacing: float | None = 1.0,
) -> CheckReport:
    """Read every scan of a dataset as training would, and report each problem with its file.

    Index a dataset leniently, then load every scan and label mask with :func:`load_scan`'s checks and run each
    session's usable scans through the preprocessing training runs (:meth:`SessionPreprocessor.to_grid`: RAS,
    ``spacing``, the reference grid, head foreground and z-score), so what passes here, training reads.

    Args:
        path: A manifest CSV or a dataset root.
        layout: ``auto``, ``manifest``, ``fomo25`` or ``bids``; ``auto`` uses :func:`detect_layout`.
        max_voxels: Passed to :func:`load_scan`.
        max_anisotropy: Passed to :func:`load_scan`.
        workers: Processes reading sessions in parallel (1: in this process).
        on_problem: Called with each problem as soon as it is found (e.g. to print it).
        spacing: The training spacing in mm (``None``: each session's own grid).

    Returns:
        The report; problems cover bad rows, unsupported files, duplicate modalities, empty sessions and every
        scan :func:`load_scan` rejects (missing, unreadable, truncated, non-finite, constant, not 3D, too large,
        too anisotropic), label masks with non-integer or out-of-range values (they may be constant) and sessions
        whose preprocessing fails or gives non-finite values.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unknown ``layout``, ``auto`` cannot tell the layout, or ``workers`` < 1.
    """
    if layout not in CHECK_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {CHECK_LAYOUTS}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    report = CheckReport(detect_layout(path) if layout == "auto" else layout)

    def found(problem: Problem) -> None:
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(problem)

    index_problems: list[Problem] = []
    try:
        sessions = _index(path, report.layout, index_problems)
    except ManifestError as error:  # missing columns: nothing else can be read
        found(Problem(path, str(error).removeprefix(f"{path}: ")))
        return report
    for problem in index_problems:
        found(problem)
    if not sessions:
        found(Problem(path, f"no session with an image found ({report.layout} layout)"))
    report.sessions = len(sessions)
    report.scans = sum(len(session.scans) for session in sessions)
    report.labels = sum(session.label_path is not None for session in sessions)
    read = partial(_check_session, max_voxels=max_voxels, max_anisotropy=max_anisotropy, spacing=spacing)
    for problems in _map(read, sessions, workers):
        for problem in problems:
            found(problem)
    return report


def _index(path: Path, layout: str, problems: list[Problem]) -> list[Session]:
    if layout == "manifest":
        return read_manifest(path, problems)
    if not path.is_dir():
        raise ValueError(f"{path}: the {layout} layout needs a folder")
    return INDEXERS[layout](path, problems)


def _check_session(session: Session, max_voxels: int, max_anisotropy: float, spacing: float | None) -> list[Problem]:
    """Load a session's scans and label mask with training's checks, then preprocess what is usable."""
    problems: list[Problem] = []
    volumes = {}
    for scan in session.scans:
        try:
            volumes[scan.modality] = load_scan(scan.path, max_voxels=max_voxels, max_anisotropy=max_anisotropy)
        except ScanError as error:
            problems.append(Problem(error.path, error.reason))
    label = None
    if session.label_path is not None:
        try:
            label = load_label(session.label_path, max_voxels=max_voxels, max_anisotropy=max_anisotropy)
        except ScanError as error:
            problems.append(Problem(error.path, f"label mask: {error.reason}"))
    if volumes:
        reference = next(s.path for s in session.scans if s.modality in volumes)
        try:
            images, _, _ = SessionPreprocessor(1, spacing).to_grid(volumes, label)
            if not np.isfinite(images.numpy()).all():
                problems.append(Problem(reference, f"preprocessing of {session.session_id} gives non-finite values"))
        except Exception as error:  # whatever stops preprocessing would stop training on this session
            detail = " ".join(str(error).split())[:300]
            problems.append(Problem(reference, f"preprocessing of {session.session_id} failed "
                                               f"({type(error).__name__}: {detail})"))
    return problems


def _map(read: Callable[[Session], list[Problem]], jobs: list, workers: int) -> Iterator[list[Problem]]:
    if workers == 1 or len(jobs) < 2:
        yield from map(read, jobs)
        return
    from brainfm_lightning.data.prepare import single_thread_worker  # forked torch: no parent thread pool

    with multiprocessing.get_context().Pool(min(workers, len(jobs)), initializer=single_thread_worker) as pool:
        yield from pool.imap(read, jobs, chunksize=8)  # in order, so the output is reproducible

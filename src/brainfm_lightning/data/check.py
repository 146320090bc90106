"""``brainfm data check``: read every scan of a dataset and report each problem with the file it concerns."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from brainfm_lightning.data.adapters import INDEXERS, LAYOUTS, detect_layout
from brainfm_lightning.data.io import ScanError, load_label, load_scan
from brainfm_lightning.data.manifest import ManifestError, Problem, Session, read_manifest

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
        return (f"checked {self.sessions} sessions, {self.scans} scans and {self.labels} label masks "
                f"({self.layout} layout): {len(self.problems)} problem(s)")


def check_dataset(
    path: str | Path,
    layout: str = "auto",
    max_voxels: int = 512**3,
    max_anisotropy: float = 8.0,
    workers: int = 1,
    on_problem: Callable[[Problem], None] | None = None,
) -> CheckReport:
    """Index a dataset leniently, then load every scan and label mask with :func:`load_scan`'s checks.

    Args:
        path: A manifest CSV or a dataset root.
        layout: ``auto``, ``manifest``, ``fomo25`` or ``bids``; ``auto`` uses :func:`detect_layout`.
        max_voxels: Passed to :func:`load_scan`.
        max_anisotropy: Passed to :func:`load_scan`.
        workers: Processes reading scans in parallel (1: in this process).
        on_problem: Called with each problem as soon as it is found (e.g. to print it).

    Returns:
        The report; problems cover bad rows, unsupported files, duplicate modalities, empty sessions and every
        scan :func:`load_scan` rejects (missing, unreadable, truncated, non-finite, constant, not 3D, too large,
        too anisotropic). Label masks may be constant.

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
    jobs = [(scan.path, False) for session in sessions for scan in session.scans]
    jobs += [(session.label_path, True) for session in sessions if session.label_path is not None]
    report.scans = sum(not is_label for _, is_label in jobs)
    report.labels = len(jobs) - report.scans
    read = partial(_check_file, max_voxels=max_voxels, max_anisotropy=max_anisotropy)
    for problem in _map(read, jobs, workers):
        if problem is not None:
            found(problem)
    return report


def _index(path: Path, layout: str, problems: list[Problem]) -> list[Session]:
    if layout == "manifest":
        return read_manifest(path, problems)
    if not path.is_dir():
        raise ValueError(f"{path}: the {layout} layout needs a folder")
    return INDEXERS[layout](path, problems)


def _check_file(job: tuple[Path, bool], max_voxels: int, max_anisotropy: float) -> Problem | None:
    path, is_label = job
    try:
        load = load_label if is_label else load_scan  # the same checks training applies
        load(path, max_voxels=max_voxels, max_anisotropy=max_anisotropy)
    except ScanError as error:
        return Problem(error.path, f"label mask: {error.reason}" if is_label else error.reason)
    return None


def _map(read: Callable[[tuple[Path, bool]], Problem | None], jobs: list, workers: int) -> Iterator[Problem | None]:
    if workers == 1 or len(jobs) < 2:
        yield from map(read, jobs)
        return
    with multiprocessing.get_context().Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(read, jobs, chunksize=8)  # in order, so the output is reproducible

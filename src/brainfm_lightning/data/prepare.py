"""``brainfm data prepare``: fill the prepared cache (:mod:`brainfm_lightning.data.cache`) for a training config."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from tqdm import tqdm

from brainfm_lightning.data.cache import PreparedCache
from brainfm_lightning.data.dataset import BadScanPolicy
from brainfm_lightning.data.io import ScanError, load_label, load_scan
from brainfm_lightning.data.manifest import Problem, Session
from brainfm_lightning.data.preprocess import SessionPreprocessor

# (problems found, whether the session is now in the cache, the bad scan that stops the run under "error")
Outcome = tuple[list[Problem], bool, Problem | None]


@dataclass
class PrepareReport:
    """What :func:`prepare_cache` did.

    Attributes:
        sessions: Sessions asked for.
        prepared: Sessions preprocessed and written by this run.
        reused: Sessions already in the cache (from an earlier, possibly interrupted, run).
        failed: Sessions left out of the cache (their preprocessing failed; reported in ``problems``).
        problems: Bad scans and label masks, each naming its file.
        removed_temp_files: Leftovers of interrupted earlier runs deleted at the end.
    """

    sessions: int = 0
    prepared: int = 0
    reused: int = 0
    failed: int = 0
    problems: list[Problem] = field(default_factory=list)
    removed_temp_files: int = 0

    def summary(self) -> str:
        """One line: sessions prepared, reused and failed, and the number of problems."""
        return (f"{self.sessions} sessions: {self.prepared} prepared, {self.reused} already prepared, "
                f"{self.failed} failed; {len(self.problems)} problem(s)")


def prepare_session(session: Session, cache: PreparedCache, policy: BadScanPolicy = "skip",
                    with_label: bool = False) -> list[Problem]:
    """Load, check and preprocess one session's scans (and label mask, if any) and store it in ``cache``.

    Args:
        session: The session.
        cache: Where to store it; its settings give the spacing and the load checks.
        policy: ``skip``: bad scans are left out and returned; ``error``: the first one raises.
        with_label: A bad label mask raises under ``error`` (else it is only reported).

    Returns:
        The problems found, each naming its file.

    Raises:
        ScanError: Under ``error``, the first bad scan; under either policy, non-finite preprocessed values.
    """
    load_kwargs = dict(max_voxels=cache.max_voxels, max_anisotropy=cache.max_anisotropy)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    problems: list[Problem] = []
    for scan in session.scans:
        try:
            volumes[scan.modality] = load_scan(scan.path, **load_kwargs)
        except ScanError as error:
            if policy == "error":
                raise
            problems.append(Problem(error.path, error.reason))
    label, label_problems = None, []
    if volumes and session.label_path is not None:
        try:
            label = load_label(session.label_path, **load_kwargs)
        except ScanError as error:
            if policy == "error" and with_label:
                raise
            label_problems.append(Problem(error.path, error.reason))
    images, label_grid, affine = None, None, np.eye(4)
    if volumes:
        stacked, label_tensor, affine = SessionPreprocessor(1, cache.spacing).to_grid(volumes, label)
        images = stacked.numpy()
        label_grid = label_tensor.numpy() if label_tensor is not None else None
        if not np.isfinite(images.astype(cache.dtype)).all():
            raise ScanError(session.scans[0].path, f"preprocessing of {session.session_id} produced non-finite "
                                                   f"values in {cache.dtype}")
    cache.write(session, list(volumes), images, affine, label_grid, problems, label_problems)
    return problems + [Problem(p.path, f"label mask: {p.reason}") for p in label_problems]


def prepare_cache(
    sessions: Sequence[Session],
    cache: PreparedCache,
    policy: BadScanPolicy = "skip",
    with_label: bool = False,
    workers: int = 1,
    on_problem: Callable[[Problem], None] | None = None,
    progress: bool = False,
) -> PrepareReport:
    """Prepare every session not yet in ``cache``; sessions finished by an earlier run are not redone.

    Args:
        sessions: The sessions (all splits).
        cache: The cache folder of the training settings.
        policy: As in :func:`prepare_session`; under ``error`` the first bad scan stops the run (sessions done
            so far stay in the cache).
        with_label: As in :func:`prepare_session`.
        workers: Processes preparing sessions in parallel (1: in this process).
        on_problem: Called with each problem as soon as it is known.
        progress: Show a tqdm progress bar (on stderr).

    Returns:
        The report.

    Raises:
        ValueError: ``workers`` < 1.
        ScanError: Under ``error``, the first bad scan.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.time()
    report = PrepareReport(sessions=len(sessions))
    todo = [s for s in sessions if not cache.is_prepared(s)]
    report.reused = len(sessions) - len(todo)
    job = partial(_prepare_one, cache=cache, policy=policy, with_label=with_label)
    with tqdm(total=len(todo), disable=not progress, desc="prepare", unit="session", dynamic_ncols=True) as bar:
        for problems, is_done, fatal in _run(job, todo, workers):
            if fatal is not None:
                raise ScanError(fatal.path, fatal.reason)
            report.prepared += is_done
            report.failed += not is_done
            for problem in problems:
                report.problems.append(problem)
                if on_problem is not None:
                    on_problem(problem)
            bar.update()
    for temp in list(cache.temp_files()):  # left by interrupted runs; files of a concurrent run are newer
        if temp.stat().st_mtime < started:
            temp.unlink(missing_ok=True)
            report.removed_temp_files += 1
    return report


def _prepare_one(session: Session, cache: PreparedCache, policy: BadScanPolicy, with_label: bool) -> Outcome:
    try:
        return prepare_session(session, cache, policy, with_label), True, None
    except ScanError as error:  # returned, not raised: ScanError does not survive pickling out of a worker
        if policy == "error":
            return [], False, Problem(error.path, error.reason)
        return [Problem(error.path, f"{error.reason}; session not prepared")], False, None


def single_thread_worker() -> None:
    """Initialise a worker process: torch and SimpleITK use one thread (one process per core, not per thread)."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _run(job: Callable[[Session], Outcome], sessions: list[Session], workers: int) -> Iterator[Outcome]:
    if workers == 1 or len(sessions) < 2:
        yield from map(job, sessions)
        return
    with ProcessPoolExecutor(min(workers, len(sessions)), initializer=single_thread_worker) as pool:
        futures = [pool.submit(job, session) for session in sessions]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:  # an error (policy "error") or an interrupt: do not start the rest
            for future in futures:
                future.cancel()

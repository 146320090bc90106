"""Indexing and sharding at FOMO25 scale, on a tree of empty placeholder files, at 1/4, 1/2 and full size.

The full tree mirrors FOMO-60K: 11,187 subjects, 13,900 sessions, 60,529 files
(``sub_XXXXX/ses_YY/<modality>.nii.gz``, 4.35 per session). For each size, a fresh process (so peak memory is
its own) times :func:`index_fomo25` and one epoch's sharding plan (:class:`EpochSampler` for 8 ranks with
bucketing by modality count, ``list(iter(sampler))`` for every rank): best and median of 5 after a warm-up; then
it reruns each once under ``tracemalloc`` for the peak of Python allocations; ``maxrss`` is the growth of the
process's peak resident memory over its baseline after imports. A least-squares line through the three sizes
(best times) is extrapolated to 100x FOMO25. The tree is deleted at the end.

    python benchmarks/index_scale.py --out index-scale-results.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

SUBJECTS, SESSIONS, FILES = 11_187, 13_900, 60_529
MODALITIES = ("t1", "t2", "flair", "dwi_b1000", "swi")
RANKS, BATCH_SIZE = 8, 4
FRACTIONS = (0.25, 0.5, 1.0)


def _spread(count: int, total: int, position: int) -> bool:
    """Whether ``position`` is one of ``count`` positions spread evenly over ``total`` (Bresenham)."""
    return (position + 1) * count // total > position * count // total


def write_tree(root: Path, first_subject: int, last_subject: int) -> tuple[int, int]:
    """Write subjects ``[first_subject, last_subject)`` of the FOMO-sized layout; returns (sessions, files)."""
    twice = SESSIONS - SUBJECTS  # subjects with a second session
    session_number = sum(1 + _spread(twice, SUBJECTS, s) for s in range(first_subject))
    sessions = files = 0
    for subject in range(first_subject, last_subject):
        for visit in range(1 + _spread(twice, SUBJECTS, subject)):
            folder = root / f"sub_{subject:05d}" / f"ses_{visit + 1:02d}"
            folder.mkdir(parents=True)
            count = 4 + _spread(FILES - 4 * SESSIONS, SESSIONS, session_number)
            for modality in MODALITIES[:count]:
                (folder / f"{modality}.nii.gz").touch()
            session_number += 1
            sessions += 1
            files += count
    return sessions, files


def _index(root: str) -> list:
    from brainfm_lightning.data.adapters import index_fomo25

    return index_fomo25(root)


def _shard(sessions: list) -> list[list[tuple[int, int]]]:
    from brainfm_lightning.data.sampling import EpochSampler

    keys = [len(s.scans) for s in sessions]
    plans = []
    for rank in range(RANKS):
        sampler = EpochSampler(sessions, num_replicas=RANKS, rank=rank, shuffle=True, seed=0, group_keys=keys,
                               batch_size=BATCH_SIZE)
        sampler.set_epoch(3)
        plans.append(list(iter(sampler)))
    return plans


def _measure(run: Callable[[], object], repeats: int = 5) -> dict[str, float]:
    run()  # warm-up: imports, directory entries in the page cache
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the minimum is the least disturbed by other processes on a shared machine; the median is kept for reference
    return {"seconds": min(seconds), "median_seconds": statistics.median(seconds), "tracemalloc_peak_mib": peak / 2**20}


def measure_size(root: str) -> dict[str, dict[str, float]]:
    """In a fresh process: time and memory of indexing ``root`` and of sharding its sessions."""
    import brainfm_lightning.data.adapters  # noqa: F401  (imports are not part of the measurement)
    import brainfm_lightning.data.sampling  # noqa: F401

    def maxrss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    baseline = maxrss_mib()
    index = _measure(lambda: _index(root))
    index["maxrss_growth_mib"] = maxrss_mib() - baseline
    sessions = _index(root)
    before = maxrss_mib()
    shard = _measure(lambda: _shard(sessions))
    shard["maxrss_growth_mib"] = maxrss_mib() - before
    shard["indices_per_rank"] = len(_shard(sessions)[0])
    return {"index": index, "shard": shard}


def extrapolate(sizes: list[int], values: list[float], factor: float) -> tuple[float, float]:
    """Value of a least-squares line through ``(sizes, values)`` at ``factor * max(sizes)``, and the log-log slope."""
    slope, intercept = np.polyfit(sizes, values, 1)
    exponent = float(np.log(values[-1] / values[0]) / np.log(sizes[-1] / sizes[0])) if values[0] > 0 else float("nan")
    return float(intercept + slope * factor * sizes[-1]), exponent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="Shrink the full size (e.g. 0.05 for a smoke run).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the numbers to this JSON file.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="brainfm-fomo-tree-"))
    context = multiprocessing.get_context("spawn")
    rows: list[dict] = []
    try:
        written_subjects = sessions = files = 0
        for fraction in FRACTIONS:
            subjects = round(SUBJECTS * fraction * args.scale)
            start = time.perf_counter()
            new_sessions, new_files = write_tree(root, written_subjects, subjects)
            sessions, files, written_subjects = sessions + new_sessions, files + new_files, subjects
            print(f"tree at {fraction:g}x: {subjects} subjects, {sessions} sessions, {files} files "
                  f"(written in {time.perf_counter() - start:.1f} s)", flush=True)
            with context.Pool(1) as pool:
                result = pool.apply(measure_size, (str(root),))
            rows.append({"fraction": fraction, "subjects": subjects, "sessions": sessions, "files": files, **result})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'size':>6}{'sessions':>10}{'files':>8} | {'index s (best/median)':>22}{'py MiB':>8}{'rss MiB':>8} | "
          f"{'shard s (best/median)':>22}{'py MiB':>8}{'rss MiB':>8}")
    for row in rows:
        cells = [f"{row['fraction']:>5g}x{row['sessions']:>10}{row['files']:>8}"]
        for stage in (row["index"], row["shard"]):
            cells.append(f"{stage['seconds']:>13.3f} /{stage['median_seconds']:>7.3f}"
                         f"{stage['tracemalloc_peak_mib']:>8.1f}{stage['maxrss_growth_mib']:>8.1f}")
        print(" | ".join(cells))
    sizes = [row["sessions"] for row in rows]
    extrapolation = {}
    print(f"\nlinear fit extrapolated to 100x ({100 * sizes[-1]:,} sessions, {100 * rows[-1]['files']:,} files):")
    for stage in ("index", "shard"):
        for measure, unit in (("seconds", "s"), ("tracemalloc_peak_mib", "MiB")):
            value, exponent = extrapolate(sizes, [row[stage][measure] for row in rows], 100)
            extrapolation[f"{stage}_{measure}"] = {"at_100x": value, "growth_exponent": exponent}
            print(f"  {stage:<6}{measure:<22}{value:>10.1f} {unit:<4}(growth ~ n^{exponent:.2f} from 1/4 to full)")
    if args.out is not None:
        args.out.write_text(json.dumps({"rows": rows, "extrapolation_100x": extrapolation}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

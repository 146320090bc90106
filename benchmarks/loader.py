"""Session loading: NIfTI decode + preprocessing against the prepared cache, side by side in one run.

Times ``SessionDataset.__getitem__`` over every session of the SYNTHETIC demo dataset (24 subjects at 2 mm) in
three modes: uncached (nibabel ``.nii.gz`` load, checks, torchio preprocessing, crop), and the prepared cache
stored as float16 and as float32 (memory-mapped crop). The modes alternate within each round, the first round is
a warm-up and is dropped, and the median of the rest is reported. Files are in the page cache for every mode, so
the ratio is decoding and preprocessing work, not disk speed.

    python benchmarks/loader.py --out loader-results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainfm_lightning.data import SessionDataset, SessionPreprocessor, read_manifest
from brainfm_lightning.data.cache import PreparedCache
from brainfm_lightning.data.demo import ensure_demo_dataset
from brainfm_lightning.data.prepare import prepare_cache


def demo_manifest(root: Path | None, subjects: int, spacing: float, scratch: Path) -> Path:
    """The demo manifest: ``root`` if it holds this demo build (or can take it), else one built in ``scratch``."""
    for candidate in ([root] if root is not None else []) + [Path("data/demo"), scratch / "demo"]:
        if candidate == Path("data/demo") and not (candidate / "manifest.csv").is_file():
            continue  # reuse the repository's demo folder only when it exists; never create it here
        try:
            return ensure_demo_dataset(candidate, n_subjects=subjects, spacing=spacing)
        except FileExistsError:
            continue
    raise RuntimeError("no folder for the demo dataset")


def time_pass(dataset: SessionDataset, epoch: int) -> float:
    """Milliseconds per session of one pass over ``dataset``."""
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[(epoch, index)]
    return (time.perf_counter() - start) * 1e3 / len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="Demo dataset folder (default: data/demo if "
                                                                "built, else a temporary folder).")
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--spacing", type=float, default=2.0, help="Voxel spacing of the demo volumes (mm).")
    parser.add_argument("--crop", type=int, default=64, help="Crop size (the quickstart's).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed rounds after the warm-up round.")
    parser.add_argument("--workers", type=int, default=2, help="Processes preparing the caches.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1, as in a DataLoader worker).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the numbers to this JSON file.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="brainfm-loader-") as scratch:
        manifest = demo_manifest(args.root, args.subjects, args.spacing, Path(scratch))
        sessions = read_manifest(manifest)
        preprocessor = SessionPreprocessor(args.crop, random_crop=True, flip_probability=0.5)
        datasets = {"nifti": SessionDataset(sessions, preprocessor)}
        cache_bytes = {}
        for dtype in ("float16", "float32"):
            cache = PreparedCache(Path(scratch) / "cache", dtype=dtype)
            prepare_cache(sessions, cache, workers=args.workers)
            cache_bytes[dtype] = sum(p.stat().st_size for p in cache.folder.rglob("*.images.npy"))
            datasets[f"cache_{dtype}"] = SessionDataset(sessions, preprocessor, cache=cache)
        worst = max(float((datasets["nifti"][(0, i)]["images"] - datasets["cache_float16"][(0, i)]["images"])
                          .abs().max()) for i in range(len(sessions)))
        times: dict[str, list[float]] = {name: [] for name in datasets}
        names = list(datasets)
        for round_ in range(args.repeats + 1):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:  # rotate the order
                elapsed = time_pass(datasets[name], epoch=round_)
                if round_:  # round 0 is the warm-up
                    times[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in times.items()}
    results = {
        "sessions": len(sessions), "modalities_per_session": float(np.mean([len(s.scans) for s in sessions])),
        "spacing_mm": args.spacing, "crop": args.crop, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "ms_per_session_median": median, "ms_per_session_all": times,
        "speedup_float16": median["nifti"] / median["cache_float16"],
        "speedup_float32": median["nifti"] / median["cache_float32"],
        "cache_image_bytes": cache_bytes, "max_abs_difference_float16_vs_nifti": worst,
    }
    print(f"{len(sessions)} sessions, {results['modalities_per_session']:.2f} modalities each, {args.spacing} mm, "
          f"crop {args.crop}^3; median of {args.repeats} alternating rounds after a warm-up")
    print(f"{'mode':<16}{'ms/session':>12}{'speedup':>10}{'image MB':>10}")
    for name in names:
        size = cache_bytes.get(name.removeprefix("cache_"))
        print(f"{name:<16}{median[name]:>12.2f}{median['nifti'] / median[name]:>9.1f}x"
              f"{size / 2**20 if size else float('nan'):>10.1f}")
    print(f"largest |float16 cache - nifti| over all samples: {worst:.2e}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

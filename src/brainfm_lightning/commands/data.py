"""``brainfm data ...`` subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import LightningDataModule

from brainfm_lightning.commands.config import build_from_configs, parse_set_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` subcommands to ``subparsers``."""
    demo = subparsers.add_parser("demo", help="Build the SYNTHETIC demo dataset (no download).",
                                 description="Build the synthetic demo dataset from the MNI152 template shipped "
                                             "inside nilearn: deformed subjects with T1/T2/PD/FLAIR-like contrasts, "
                                             "white-matter lesions with masks, and a manifest.csv.")
    demo.add_argument("--out", default="data/demo", help="Output folder (default: %(default)s).")
    demo.add_argument("--subjects", type=int, default=24, help="Number of subjects (default: %(default)s).")
    demo.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    demo.add_argument("--spacing", type=float, default=2.0, help="Voxel spacing in mm (default: %(default)s).")
    demo.add_argument("--lesions", default="ms", choices=("ms", "heterotopia"),
                      help="ms: lesions bright on FLAIR, T2, PD and dark on T1; heterotopia: grey-matter nodules in "
                           "the white matter, abnormal only by their place (default: %(default)s).")
    demo.add_argument("--overwrite", action="store_true", help="Rebuild even if the folder holds a dataset.")
    demo.set_defaults(func=run_demo)
    check = subparsers.add_parser(
        "check", help="Read every scan of a dataset and list each problem with its file.",
        description="Read every scan (and label mask) of a manifest CSV or a dataset folder (BIDS or FOMO-60K "
                    "layout) with the training checks and run each session through training's preprocessing (RAS, "
                    "--spacing, the first scan's grid, head z-score); print each problem as '<file>: <reason>', "
                    "then a summary. Exit status: 0 clean, 1 problems found, 2 bad arguments.")
    check.add_argument("path", help="A manifest .csv, or a dataset root with sub-* (BIDS) or sub_* (FOMO) folders.")
    check.add_argument("--layout", default="auto", choices=("auto", "manifest", "fomo25", "bids"),
                       help="How to read PATH (default: %(default)s, from the file or folder names).")
    check.add_argument("--max-voxels", type=int, default=512**3,
                       help="Reject larger volumes (default: %(default)s).")
    check.add_argument("--max-anisotropy", type=float, default=8.0,
                       help="Reject a larger ratio of coarsest to finest voxel spacing (default: %(default)s).")
    check.add_argument("--workers", type=int, default=1,
                       help="Processes reading sessions in parallel (default: %(default)s).")
    check.add_argument("--spacing", type=float, default=1.0, metavar="MM",
                       help="The training spacing in mm the sessions are resampled to (default: %(default)s).")
    check.set_defaults(func=run_check)
    prepare = subparsers.add_parser(
        "prepare", help="Preprocess every session of a training config once into the prepared cache.",
        description="Load, check and preprocess (RAS, spacing, shared grid, foreground z-score) every session of "
                    "the datamodule in the 'data:' section of training configs, and store it as memory-mapped "
                    "float16 arrays under CACHE_ROOT/<settings key>/, so that training (data.init_args.cache_dir) "
                    "reads random crops without decoding whole volumes. Finished sessions are kept, so an "
                    "interrupted run resumes. Bad scans are printed as '<file>: <reason>' and handled by the "
                    "config's bad_scan_policy. Exit status: 0 done, 1 stopped by a bad scan (policy 'error'), "
                    "2 bad arguments.")
    prepare.add_argument("--config", action="append", required=True, metavar="CONFIG.yaml",
                         help="LightningCLI config with a 'data:' section (class_path + init_args), e.g. "
                              "configs/pretrain/quickstart.yaml; repeat to compose, later files override.")
    prepare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                         help="Override a data init_arg, as --data.KEY VALUE does for brainfm fit "
                              "(e.g. --set manifest=PATH); repeatable.")
    prepare.add_argument("--cache-root", default=None,
                         help="Cache folder (default: data.init_args.cache_dir of the config).")
    prepare.add_argument("--workers", type=int, default=1,
                         help="Processes preparing sessions in parallel (default: %(default)s).")
    prepare.add_argument("--no-progress", action="store_true", help="No progress bar.")
    prepare.set_defaults(func=run_prepare)


def load_datamodule(configs: Sequence[str | Path], overrides: Sequence[tuple[str, str]] = ()) -> LightningDataModule:
    """Build the datamodule of LightningCLI training configs the way ``brainfm fit`` does; no model is built.

    Args:
        configs: YAML files with a ``data`` section, composed left to right.
        overrides: ``(KEY, VALUE)`` pairs, ``KEY`` a data init_arg, optionally written ``data.KEY`` or
            ``data.init_args.KEY``; ``VALUE`` read as YAML.

    Returns:
        The datamodule.

    Raises:
        FileNotFoundError: A config file does not exist (named).
        ValueError: No config has a ``data`` section, or a value is rejected (named).
    """
    data_keys = [(f"data.{key.removeprefix('data.').removeprefix('init_args.')}", value) for key, value in overrides]
    return build_from_configs(configs, data_keys, with_model=False)[1]


def run_demo(args: argparse.Namespace) -> int:
    """Run ``brainfm data demo``; returns the exit status (0 written, 2 bad arguments)."""
    from brainfm_lightning.data.demo import build_demo_dataset

    if args.subjects < 1:
        print(f"brainfm data demo: --subjects must be >= 1, got {args.subjects}")
        return 2
    if args.spacing <= 0:
        print(f"brainfm data demo: --spacing must be positive, got {args.spacing}")
        return 2
    manifest = build_demo_dataset(Path(args.out), n_subjects=args.subjects, seed=args.seed, spacing=args.spacing,
                                  overwrite=args.overwrite, lesions=args.lesions)
    print(f"wrote the SYNTHETIC demo dataset: {manifest}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Run ``brainfm data check``; returns the exit status (0 clean, 1 problems found, 2 bad arguments)."""
    from brainfm_lightning.data.check import check_dataset

    try:
        report = check_dataset(args.path, layout=args.layout, max_voxels=args.max_voxels,
                               max_anisotropy=args.max_anisotropy, workers=args.workers,
                               on_problem=lambda problem: print(problem, flush=True), spacing=args.spacing)
    except (FileNotFoundError, ValueError) as error:
        print(f"brainfm data check: error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.problems else 0


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``brainfm data prepare``; returns the exit status (0 done, 1 stopped by a bad scan, 2 bad arguments)."""
    from tqdm import tqdm

    from brainfm_lightning.data.cache import PreparedCache
    from brainfm_lightning.data.io import ScanError
    from brainfm_lightning.data.prepare import prepare_cache

    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        datamodule = load_datamodule(args.config, parse_set_overrides(args.overrides))
        if not all(hasattr(datamodule, name) for name in ("sessions", "spacing", "load_kwargs", "bad_scan_policy")):
            raise ValueError(f"{type(datamodule).__name__} does not serve sessions; brainfm data prepare needs a "
                             "ManifestDataModule (or subclass: DemoDataModule, Fomo25DataModule, BidsDataModule)")
        cache_root = args.cache_root or getattr(datamodule, "cache_dir", None)
        if not cache_root:
            raise ValueError("no cache folder: pass --cache-root or set data.init_args.cache_dir in the config")
        cache = PreparedCache(cache_root, datamodule.spacing, **datamodule.load_kwargs)
        sessions = datamodule.sessions
    except (FileNotFoundError, ValueError) as error:
        print(f"brainfm data prepare: error: {error}", file=sys.stderr)
        return 2
    print(f"preparing {len(sessions)} sessions into {cache.folder}", flush=True)
    try:
        report = prepare_cache(sessions, cache, policy=datamodule.bad_scan_policy, with_label=datamodule.with_label,
                               workers=args.workers, on_problem=lambda problem: tqdm.write(str(problem)),
                               progress=not args.no_progress)
    except ScanError as error:
        print(f"brainfm data prepare: stopped by a bad scan (bad_scan_policy 'error'): {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0

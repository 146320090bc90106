"""``brainfm data ...`` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    demo.add_argument("--overwrite", action="store_true", help="Rebuild even if the folder holds a dataset.")
    demo.set_defaults(func=run_demo)
    check = subparsers.add_parser(
        "check", help="Read every scan of a dataset and list each problem with its file.",
        description="Read every scan (and label mask) of a manifest CSV or a dataset folder (BIDS or FOMO-60K "
                    "layout) with the training checks; print each problem as '<file>: <reason>', then a summary. "
                    "Exit status: 0 clean, 1 problems found, 2 bad arguments.")
    check.add_argument("path", help="A manifest .csv, or a dataset root with sub-* (BIDS) or sub_* (FOMO) folders.")
    check.add_argument("--layout", default="auto", choices=("auto", "manifest", "fomo25", "bids"),
                       help="How to read PATH (default: %(default)s, from the file or folder names).")
    check.add_argument("--max-voxels", type=int, default=512**3,
                       help="Reject larger volumes (default: %(default)s).")
    check.add_argument("--max-anisotropy", type=float, default=8.0,
                       help="Reject a larger ratio of coarsest to finest voxel spacing (default: %(default)s).")
    check.add_argument("--workers", type=int, default=1,
                       help="Processes reading scans in parallel (default: %(default)s).")
    check.set_defaults(func=run_check)


def run_demo(args: argparse.Namespace) -> int:
    from brainfm_lightning.data.demo import build_demo_dataset

    if args.subjects < 1:
        print(f"brainfm data demo: --subjects must be >= 1, got {args.subjects}")
        return 2
    if args.spacing <= 0:
        print(f"brainfm data demo: --spacing must be positive, got {args.spacing}")
        return 2
    manifest = build_demo_dataset(Path(args.out), n_subjects=args.subjects, seed=args.seed, spacing=args.spacing,
                                  overwrite=args.overwrite)
    print(f"wrote the SYNTHETIC demo dataset: {manifest}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from brainfm_lightning.data.check import check_dataset

    try:
        report = check_dataset(args.path, layout=args.layout, max_voxels=args.max_voxels,
                               max_anisotropy=args.max_anisotropy, workers=args.workers,
                               on_problem=lambda problem: print(problem, flush=True))
    except (FileNotFoundError, ValueError) as error:
        print(f"brainfm data check: error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.problems else 0

"""``brainfm data ...`` subcommands."""

from __future__ import annotations

import argparse
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

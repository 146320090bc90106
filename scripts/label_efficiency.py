"""Does pretraining pay when labels are few? BrainFM pretrained vs scratch vs a U-Net at 2-16 labelled subjects.

``make label-efficiency`` (about three hours on 2 cores: sizes 2 and 8, 3 seeds, 800 augmented fine-tuning steps for
each of 24 segmenters; ``--steps 200`` takes about an hour, too few for a BrainFM segmenter to learn the task;
``--full`` for the whole design, which takes many hours; ``--quick`` for a smoke run of every stage). Everything is
SYNTHETIC demo data at 4 mm, 32^3 crops, the ``small`` preset with 8^3 patches (``configs/compare/brainfm_32.yaml``):

1. An unlabelled pretraining pool, ``data/demo_4mm_pool``: ``--pool`` subjects from another generator seed than the
   labelled set, with every demo sequence but ``--unseen`` (default PD: the pool holds T1, T2 and FLAIR).
2. The labelled set, ``data/demo_4mm`` (48 subjects): a fixed test split (``sub-037`` .. ``sub-048``), 4 validation
   subjects (``sub-033`` .. ``sub-036``) and a labelled pool of 32; each seed draws nested training sets of every
   size in ``--sizes`` from it. ``--lesions heterotopia`` reads ``data/demo_4mm_heterotopia`` instead: the same
   subjects and masks, with grey-matter nodules in the white matter in place of lesions that are outliers on every
   sequence (the pool keeps its own lesions, unlabelled). The ``--unseen`` sequence appears here only, under a
   descriptive name (``UNSEEN_NAMES``, e.g. PD as ``PD-TSE``): a sequence and a name the pretrained encoder never
   saw.
3. ``brainfm fit`` of ``configs/pretrain/quickstart.yaml`` on the pool for ``--pretrain-steps`` (once per variant:
   the model itself and each ``--ablations`` entry: ``no_cln`` Conditional LayerNorm frozen at its identity start,
   ``shuffled_names`` each session's sequence names permuted at random in every step, ``no_vicreg`` no
   variance/covariance terms).
4. For every size and seed: ``brainfm fit`` of ``configs/finetune/seg_demo.yaml`` (``--steps`` steps, the
   ``--stem`` full-resolution path, ``conditioned`` by default) from each pretrained variant (with
   ``--head-only-steps``, the head first, alone) and from scratch,
   and of ``configs/finetune/unet_baseline.yaml``; the last checkpoint goes through ``brainfm evaluate
   robustness`` on the test split: whole volumes, scored in native space, with every sequence and with each one
   missing. Ablations run at the sizes in ``--ablation-sizes``, with two more segmenters there: the pretrained and
   a randomly initialised encoder, each kept frozen (do the encoder's features matter?).
5. A linear probe (logistic / ridge regression) and 5-nearest-neighbours on frozen, mean-pooled encoder features of
   the pretrained and of randomly initialised encoders (one per seed): lesion presence and lesion volume, fitted on
   the labelled pool and scored on the test split.

Writes to ``--out``: ``results.csv`` (one row per model, size, condition: mean and sample std over seeds of the
per-seed test means of Dice, HD95 in mm and lesion-wise F1, and Dice on the cases with a lesion apart from the
fraction of lesion-free cases left empty), ``runs.csv`` (every run), ``probe.csv``,
``paired.csv`` (each model minus the scratch BrainFM, and each ablation and frozen encoder minus the pretrained
BrainFM, seed by seed: the same subjects, so their draw cancels),
``results.md`` (tables, command, timings) and ``label_efficiency.png`` (the curves).
Runs in one process (the commands' own entry point, ``brainfm_lightning.cli.main``), so no run pays Python's start-up.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # data_modules/ for the configs' class paths when run as a script
CONFIGS = REPO / "configs"
DEMO_SEQUENCES = ("T1", "T2", "PD", "FLAIR")  # brainfm_lightning.data.demo.CONTRASTS
# the sequence kept out of pretraining appears at fine-tuning under a name the text encoder never embedded either
UNSEEN_NAMES = {"T1": "T1-MPRAGE", "T2": "T2-TSE", "PD": "PD-TSE", "FLAIR": "T2-FLAIR-3D-SPACE"}
TEST = [f"sub-{k:03d}" for k in range(37, 49)]
VAL = [f"sub-{k:03d}" for k in range(33, 37)]
LABELLED_POOL = [f"sub-{k:03d}" for k in range(1, 33)]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SCRATCH = "BrainFM (scratch)"  # the reference of the paired differences: what pretraining is measured against
METHOD = "BrainFM (pretrained)"  # ... and of the ablations and frozen encoders: what each change costs the method
FROZEN = {"frozen_random": "BrainFM (frozen random encoder)",
          "frozen_pretrained": "BrainFM (frozen pretrained encoder)"}
PAIRED_METRICS = {"dice": "Dice", "dice_with_lesion": "Dice on the test cases with a lesion"}
ABLATIONS = {  # name -> (table name, pretraining overrides)
    "no_cln": ("BrainFM (no CLN)", ["--model.init_args.net.init_args.conditioning", "none"]),
    "shuffled_names": ("BrainFM (shuffled names)", ["--model.init_args.shuffle_modality_names", "true"]),
    "no_vicreg": ("BrainFM (no VICReg)", ["--model.init_args.lambda_var", "0", "--model.init_args.lambda_cov", "0"]),
}


def pool_sequences(unseen: str) -> tuple[str, ...]:
    """The pretraining pool's sequences: every demo sequence but ``unseen``."""
    return tuple(m for m in DEMO_SEQUENCES if m != unseen)


def pretrained_overrides(head_only_steps: float, layer_decay: float | None) -> list[str]:
    """Fine-tuning overrides for the segmenters that start from a pretrained encoder (not scratch, not frozen)."""
    overrides = ["--model.init_args.head_only_steps", str(head_only_steps)] if head_only_steps else []
    if layer_decay is not None:
        overrides += ["--model.init_args.layer_decay", str(layer_decay)]
    return overrides


def unet_channels(unseen: str) -> str:
    """The U-Net's fixed input channels (JSON): the pool's sequences, then the unseen one under its new name."""
    return json.dumps([*pool_sequences(unseen), UNSEEN_NAMES[unseen]])


def evaluation_overrides(model: str, stem: str, unseen: str, fusion: str = "mean") -> list[str]:
    """``brainfm evaluate`` rebuilds a model from the configs: the ``--set`` options its training overrode.

    The U-Net's channel list; a BrainFM segmenter's stem and fusion (``per_sequence`` and ``mean`` share their
    weights, so a missing stem would load and silently evaluate another network).
    """
    if model == "unet":
        return ["--set", f"model.init_args.modalities={unet_channels(unseen)}"]
    return ["--set", f"model.init_args.head.init_args.stem={stem}",
            "--set", f"model.init_args.head.init_args.fusion={fusion}"]


def evaluation_folder(min_lesion_ml: float) -> str:
    """Where a segmenter's test scores go: ``robustness``, or ``robustness_min<ML>ml`` when post-processed."""
    return f"robustness_min{min_lesion_ml:g}ml" if min_lesion_ml else "robustness"


def config_args(configs: Sequence[str | Path]) -> list[str]:
    """``--config`` options, composed left to right (names relative to ``configs/``)."""
    return [item for c in configs for item in ("--config", str(c if Path(c).is_absolute() else CONFIGS / c))]


class Runner:
    """Runs ``brainfm`` commands in this process, logs their times, and skips trainings already done (``--reuse``)."""

    def __init__(self, work: Path, reuse: bool) -> None:
        from brainfm_lightning.cli import main

        self.main, self.work, self.reuse = main, work, reuse
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str, args: list[str]) -> None:
        print(f"[{stage}] brainfm {' '.join(args)}", flush=True)
        start = time.perf_counter()
        code = self.main(args)
        self.timings[stage] = time.perf_counter() - start
        print(f"[{stage}] done in {self.timings[stage]:.0f} s", flush=True)
        if code:
            sys.exit(f"label-efficiency: stage {stage!r} failed with exit status {code}")

    def fit(self, stage: str, configs: Sequence[str | Path], *extra: str) -> Path:
        folder = self.work / stage
        found = sorted(folder.rglob("last.ckpt"))
        if not (self.reuse and found):
            self(stage, ["fit", *config_args(configs), "--trainer.default_root_dir", str(folder), *QUIET, *extra])
            found = sorted(folder.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            sys.exit(f"label-efficiency: no last.ckpt under {folder}")
        return found[-1]


def labelled_root(lesions: str) -> Path:
    """Folder of the labelled set with ``lesions`` (a ``LESION_KINDS`` entry)."""
    return REPO / ("data/demo_4mm" if lesions == "ms" else f"data/demo_4mm_{lesions}")


def build_data(pool_subjects: int, unseen: str, lesions: str = "ms") -> tuple[Path, list[dict[str, str]]]:
    """The pretraining pool and the labelled set (built on first use); returns the pool's root and labelled rows."""
    from brainfm_lightning.data.demo import ensure_demo_dataset

    pool = ensure_demo_dataset(REPO / "data/demo_4mm_pool", n_subjects=pool_subjects, seed=1, spacing=4.0,
                               modalities=pool_sequences(unseen)).parent
    manifest = ensure_demo_dataset(labelled_root(lesions), n_subjects=48, seed=0, spacing=4.0, lesions=lesions)
    rows = [dict(r) | {"path": str((manifest.parent / r["path"]).resolve())} for r in csv.DictReader(manifest.open())]
    return pool, rows


def data_config(path: Path, manifest: Path, cache: Path, augment: bool = False) -> Path:
    """A data config reading ``manifest`` (with its split column) at 4 mm, 32^3 crops on the 8^3 patch lattice.

    ``augment``: random affine, bias field, gamma and noise on the training crops (never on val/test), besides the
    left-right flips every run has.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": {"class_path": "data_modules.ManifestDataModule", "init_args": {
        "manifest": str(manifest), "spacing": 4.0, "crop_size": 32, "crop_step": 8, "batch_size": 2, "num_workers": 0,
        "with_label": True, "cache_dir": str(cache), "prepare_cache": True, "augment": augment}}}, indent=1))
    return path


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    from brainfm_lightning.data.demo import LESION_KINDS
    from brainfm_lightning.models.seg_head import FUSIONS, STEMS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "label-efficiency", help="Tables and figure.")
    parser.add_argument("--work", type=Path, default=REPO / "runs/label-efficiency", help="Checkpoints and logs.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8], help="Labelled training subjects.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds (>= 3 for a spread).")
    parser.add_argument("--pool", type=int, default=200, help="Unlabelled pretraining subjects.")
    parser.add_argument("--pretrain-steps", type=int, default=3000, help="Pretraining steps (batches of 4).")
    parser.add_argument("--steps", type=int, default=800, help="Fine-tuning steps of every segmenter (batches of 2).")
    parser.add_argument("--unseen", default="PD", choices=list(DEMO_SEQUENCES),
                        help="The sequence kept out of the pretraining pool; the labelled set shows it under a new "
                             "name (PD: PD-TSE, FLAIR: T2-FLAIR-3D-SPACE, T1: T1-MPRAGE, T2: T2-TSE).")
    parser.add_argument("--lesions", default="ms", choices=LESION_KINDS,
                        help="Lesions of the labelled set: ms (outliers on every sequence) or heterotopia (grey "
                             "matter in the white matter: only its place is abnormal).")
    parser.add_argument("--stem", default="conditioned", choices=STEMS,
                        help="BrainFM segmenter's full-resolution path (ModalityUNETR's stem).")
    parser.add_argument("--fusion", default="mean_var", choices=FUSIONS,
                        help="How BrainFM segmenters fuse the sequences of one position (ModalityUNETR's fusion): "
                             "mean, or mean_var (mean and variance over the present sequences, HeMIS-style).")
    parser.add_argument("--head-only-steps", type=float, default=0.0,
                        help="Pretrained segmenters (not scratch) train the head alone for this many steps (or this "
                             "fraction of --steps, below 1) before the encoder joins (SegmentationModule's "
                             "head_only_steps; default: 0, all together).")
    parser.add_argument("--pretrained-layer-decay", type=float, default=None,
                        help="Layer-wise lr decay of the pretrained segmenters' encoders (not scratch; 1: none; "
                             "default: the fine-tuning config's, 0.75 as in MAE/BEiT fine-tuning).")
    parser.add_argument("--min-lesion-ml", type=float, default=0.0,
                        help="Post-processing of every segmenter's test masks: clear predicted lesions smaller than "
                             "this many ml before scoring (brainfm evaluate robustness --min-lesion-ml; the smallest "
                             "lesion of the labelled pool is about 4 ml). Default: 0, none. Scores land in "
                             "robustness_min<ML>ml/ beside the raw ones, so --reuse rescoring retrains nothing.")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="Fine-tune every segmenter on augmented crops (random affine, bias field, gamma, noise; "
                             "flips always). --no-augment: flips only.")
    parser.add_argument("--ablations", nargs="*", default=[], choices=list(ABLATIONS),
                        help="Pretraining variants to pretrain and fine-tune too (default: none; each adds a "
                             "pretraining and its fine-tunings at --ablation-sizes).")
    parser.add_argument("--ablation-sizes", type=int, nargs="*", default=[8],
                        help="Sizes at which the ablations and the frozen encoders are trained.")
    parser.add_argument("--no-probe", action="store_true", help="Skip the frozen-feature probes.")
    parser.add_argument("--only", nargs="+", default=None, metavar="MODEL",
                        choices=["pretrained", "scratch", "unet", "frozen_random", "frozen_pretrained", *ABLATIONS],
                        help="Train and evaluate only these segmenters (e.g. to split a run over processes; a "
                             "later --reuse run without --only reads every result).")
    parser.add_argument("--full", action="store_true",
                        help="The whole design (hours on 2 cores): sizes 2 4 8 16 and every ablation at sizes 4 "
                             "and 8. The default (sizes 2 and 8, no ablation) takes about three hours.")
    parser.add_argument("--quick", action="store_true",
                        help="Every stage once, tiny (a smoke run of about 10 minutes, no figure to read): pool 24, "
                             "40 pretraining and 10 fine-tuning steps, 2 labelled subjects, seed 0.")
    parser.add_argument("--reuse", action="store_true", help="Skip trainings whose last.ckpt exists.")
    return parser


def main(argv: list[str] | None = None) -> int:
    from brainfm_lightning.evaluation import label_efficiency as le
    from brainfm_lightning.evaluation import label_efficiency_report as tables

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.full:
        args.sizes, args.ablations, args.ablation_sizes = [2, 4, 8, 16], list(ABLATIONS), [4, 8]
    if args.quick:
        args.pool, args.pretrain_steps, args.steps, args.sizes, args.ablation_sizes = 24, 40, 10, [2], [2]
        args.seeds = [0]
    if min(args.pool, args.pretrain_steps, args.steps) < 1:
        parser.error("--pool, --pretrain-steps and --steps must be >= 1")
    if args.head_only_steps < 0:
        parser.error(f"--head-only-steps must be >= 0, got {args.head_only_steps:g}")
    if not args.min_lesion_ml >= 0:
        parser.error(f"--min-lesion-ml must be >= 0, got {args.min_lesion_ml:g}")
    if args.pretrained_layer_decay is not None and not 0 < args.pretrained_layer_decay <= 1:
        parser.error(f"--pretrained-layer-decay must lie in (0, 1], got {args.pretrained_layer_decay:g}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    start = time.perf_counter()
    work = args.work.resolve()
    run = Runner(work, args.reuse)
    pool_root, labelled_rows = build_data(args.pool, args.unseen, args.lesions)
    unseen_name, rename = UNSEEN_NAMES[args.unseen], {args.unseen: UNSEEN_NAMES[args.unseen]}
    labelled = labelled_root(args.lesions)
    cache = labelled.with_name(labelled.name + "-prepared")
    net = ["compare/brainfm_32.yaml"]
    pool_data = ["--data.class_path", "data_modules.DemoDataModule", "--data.init_args.root", str(pool_root),
                 "--data.init_args.n_subjects", str(args.pool), "--data.init_args.demo_seed", "1",
                 "--data.init_args.demo_spacing", "4.0", "--data.init_args.spacing", "4.0",
                 "--data.init_args.demo_modalities", json.dumps(pool_sequences(args.unseen)),
                 "--data.init_args.crop_size", "32", "--data.init_args.crop_step", "8",
                 "--data.init_args.val_fraction", "0.05",
                 "--data.init_args.num_workers", "0", "--data.init_args.augment", "false"]

    # 1. pretraining, once per variant
    pretrain_steps = ["--trainer.max_steps", str(args.pretrain_steps), "--trainer.max_epochs", "-1",
                      "--trainer.check_val_every_n_epoch", "1000000"]
    variants = {"pretrained": (METHOD, [])} | {a: ABLATIONS[a] for a in args.ablations}
    checkpoints = {}
    for variant, (_, overrides) in variants.items():
        checkpoints[variant] = run.fit(f"pretrain_{variant}", ["pretrain/quickstart.yaml", *net],
                                       *pretrain_steps, *pool_data, *overrides)

    # 2. fine-tuning and evaluation per size and seed
    fine_tune = ["--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "-1",
                 "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"]
    seg = ["finetune/seg_demo.yaml", *net]
    unet = ["finetune/unet_baseline.yaml", "compare/unet_32.yaml"]
    unet_args = ["--model.init_args.modalities", unet_channels(args.unseen)]
    seg_stem = ["--model.init_args.head.init_args.stem", args.stem, "--model.init_args.head.init_args.fusion",
                args.fusion]
    pretrained_recipe = pretrained_overrides(args.head_only_steps, args.pretrained_layer_decay)
    records: list[dict[str, object]] = []
    for seed in args.seeds:
        for size, subjects in le.nested_subsets(LABELLED_POOL, args.sizes, seed).items():
            tag = f"n{size:02d}_seed{seed}"
            rows = le.split_manifest(labelled_rows, {"train": subjects, "val": VAL, "test": TEST},
                                     rename=rename)
            manifest = le.write_manifest(rows, work / "manifests" / f"{tag}.csv")
            data = data_config(work / "manifests" / f"{tag}.yaml", manifest, cache, args.augment)
            models = {"scratch": (SCRATCH, seg, [*seg_stem]),
                      "unet": ("U-Net (fixed channels)", unet, unet_args)}
            for variant, (name, _) in variants.items():
                if variant == "pretrained" or size in args.ablation_sizes:
                    models[variant] = (name, seg, [*seg_stem, *pretrained_recipe,
                                                   "--model.init_args.pretrained", str(checkpoints[variant])])
            if size in args.ablation_sizes:  # do the encoder's features matter? pretrained and random, frozen
                frozen = [*seg_stem, "--model.init_args.freeze_encoder", "full"]
                models["frozen_random"] = (FROZEN["frozen_random"], seg, frozen)
                pretrained = ["--model.init_args.pretrained", str(checkpoints["pretrained"])]
                models["frozen_pretrained"] = (FROZEN["frozen_pretrained"], seg, [*frozen, *pretrained])
            for key, (name, configs, extra) in models.items():
                if args.only and key not in args.only:
                    continue
                stage = f"{tag}_{key}"
                configs = [*configs, data]
                checkpoint = run.fit(stage, configs, *fine_tune, "--seed_everything", str(seed), *extra)
                out = work / stage / evaluation_folder(args.min_lesion_ml)
                if not (args.reuse and (out / "robustness_cases.csv").is_file()):
                    run(f"{stage}_evaluate", ["evaluate", "robustness", *config_args(configs), "--ckpt_path",
                                              str(checkpoint), "--out", str(out), "--max-missing", "1",
                                              "--min-lesion-ml", str(args.min_lesion_ml),
                                              *evaluation_overrides(key, args.stem, args.unseen, args.fusion)])
                grouped = le.condition_cases(csv.DictReader((out / "robustness_cases.csv").open()),
                                             le.REPORT_METRICS)
                records += [{"model": name, "n_labelled": size, "seed": seed, "condition": condition, "cases": cases}
                            for condition, cases in grouped.items()]

    # 3. frozen-feature probes
    probe_rows: list[dict[str, object]] = []
    if not args.no_probe:
        data = data_config(work / "manifests" / "probe.yaml", le.write_manifest(
            le.split_manifest(labelled_rows, {"train": LABELLED_POOL, "val": VAL, "test": TEST},
                              rename=rename), work / "manifests" / "probe.csv"), cache)
        probe_rows = frozen_feature_probes([CONFIGS / "pretrain/quickstart.yaml", CONFIGS / net[0], data],
                                           checkpoints["pretrained"], args.seeds)
        args.out.mkdir(parents=True, exist_ok=True)
        tables.write_rows(probe_rows, args.out / "probe.csv")

    summary = le.aggregate(records, le.REPORT_METRICS)
    args.out.mkdir(parents=True, exist_ok=True)
    tables.write_rows(summary, args.out / "results.csv")
    tables.write_rows([{k: v for k, v in r.items() if k != "cases"} | {
        m: le.nanmean(c[m] for c in r["cases"]) for m in le.REPORT_METRICS} for r in records],  # type: ignore[union-attr]
        args.out / "runs.csv")
    paired = paired_rows(records)
    if paired:
        tables.write_rows(paired, args.out / "paired.csv")
    tables.plot_curves(summary, args.out / "label_efficiency.png",
                       conditions=("all",), metrics=("dice", "dice_with_lesion", "lesion_f1"))
    total = time.perf_counter() - start
    command = "python scripts/label_efficiency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = [f"# Label efficiency on the SYNTHETIC demo data at 4 mm (test split: {len(TEST)} subjects)", "",
              f"`{command.strip()}`: pool {args.pool} unlabelled subjects ({', '.join(pool_sequences(args.unseen))}), "
              f"{args.pretrain_steps} "
              f"pretraining steps, {args.steps} fine-tuning steps per segmenter (BrainFM stem `{args.stem}`, fusion "
              f"`{args.fusion}`), seeds "
              f"{args.seeds}; labelled lesions `{args.lesions}`; pretrained segmenters' head-only steps "
              f"{args.head_only_steps:g}, layer decay "
              + (f"{args.pretrained_layer_decay:g}" if args.pretrained_layer_decay is not None else "of the config")
              + "; fine-tuning crops "
              + ("augmented (affine, bias field, gamma, noise, flips)" if args.augment else "flipped only")
              + (f"; predicted lesions below {args.min_lesion_ml:g} ml cleared before scoring" if args.min_lesion_ml
                 else "")
              + f"; wall time {total / 60:.1f} min"
              + (" (this invocation; trainings and evaluations found under --work were reused)" if args.reuse else "")
              + ". Cells: mean ± sample std over seeds of each seed's mean "
              f"over the test sessions; {args.unseen} is shown as `{unseen_name}`, never seen in pretraining.", ""]
    for metric, title in (("dice", "Dice"), ("hd95", "HD95 (mm)"), ("lesion_f1", "Lesion-wise F1"),
                          ("dice_with_lesion", "Dice on the test cases with a lesion"),
                          ("clean_without_lesion", "Lesion-free test cases left empty (fraction)")):
        report += [f"## {title}", "", tables.markdown_table(summary, metric)]
    for reference, title in ((SCRATCH, "each model"), (METHOD, "each ablation and frozen encoder")):
        for metric, metric_title in PAIRED_METRICS.items():
            rows = [row for row in paired if row["metric"] == metric and row["reference"] == reference]
            if rows:
                report += [f"## {metric_title}: {title} minus {reference}, seed by seed (same subjects), every "
                           "sequence", "", tables.paired_table(rows)]
    if probe_rows:
        report += ["## Frozen features (test split)", "", "| encoder | target | probe | score | value |",
                   "|---|---|---|---|---|"]
        report += [f"| {r['encoder']} | {r['target']} | {r['probe']} | {r['score']} | {float(r['value']):.3f}"
                   + (f" ± {float(r['std']):.3f}" if not math.isnan(float(r['std'])) else "") + " |"
                   for r in probe_rows]
    report += ["", "Stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items())]
    (args.out / "results.md").write_text("\n".join(report) + "\n")
    print("\n".join(report[:-1]))
    print(f"wrote {args.out}/results.md, results.csv, runs.csv, label_efficiency.png")
    return 0


def paired_rows(records: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Seed-by-seed differences: every model minus the scratch BrainFM (does pretraining pay?), and each ablation and
    frozen encoder minus the pretrained BrainFM (what does each change cost the method?), for ``PAIRED_METRICS``."""
    from brainfm_lightning.evaluation import label_efficiency as le

    variants_of_method = {name for name, _ in ABLATIONS.values()} | set(FROZEN.values())
    return [row for reference in (SCRATCH, METHOD) for metric in PAIRED_METRICS
            for row in le.paired_differences(records, reference=reference, metric=metric)
            if reference == SCRATCH or row["model"] in variants_of_method]


def frozen_feature_probes(configs: Sequence[Path], checkpoint: Path, seeds: Sequence[int]) -> list[dict[str, object]]:
    """Probes of lesion presence and volume on the pretrained encoder's and on random encoders' pooled features.

    Features are taken on the centred crop of each session with all its sequences; the probes are fitted on the
    labelled pool (``train`` split) and scored on the test split. One random encoder per seed gives the spread.
    """
    import numpy as np
    import torch

    from brainfm_lightning.commands.evaluate import load_trained
    from brainfm_lightning.evaluation.probe import pooled_features, probe_scores
    from brainfm_lightning.models import ModalityMAE

    module, datamodule = load_trained([str(c) for c in configs], str(checkpoint), with_label=False)
    module.eval()
    columns = ("has_lesion", "lesion_volume_ml")

    def embed(names, like):
        return module.modality_embeddings(names, like=like)

    def features(net):
        return [pooled_features(net, embed, datamodule.evaluation_dataloader(split), columns)
                for split in ("train", "test")]

    encoders = {"pretrained": [features(module.net)]}
    config = {k: v for k, v in module.net.config.items() if k != "preset"}
    for seed in seeds:
        torch.manual_seed(seed)
        encoders.setdefault("random init", []).append(features(ModalityMAE(preset=module.net.config["preset"],
                                                                           **config).eval()))
    rows: list[dict[str, object]] = []
    for encoder, draws in encoders.items():
        for column, task in zip(columns, ("classification", "regression"), strict=True):
            scores = [probe_scores(train[0], train[1][column], test[0], test[1][column], task)
                      for train, test in draws]
            for score in scores[0]:
                values = np.array([s[score] for s in scores])
                rows.append({"encoder": encoder, "target": column, "probe": score.split("_")[0],
                             "score": score.split("_", 1)[1], "value": float(values.mean()),
                             "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                             "n_encoders": len(values)})
    return rows


if __name__ == "__main__":
    sys.exit(main())

"""BrainFM vs a fixed-channel U-Net on the SYNTHETIC demo data, with all modalities and with each one missing.

Runs the real commands, one subprocess each (``make compare``), on ``configs/compare/demo_4mm.yaml``: 48 demo
subjects written at 4 mm (built on first use under ``data/demo_4mm``), 32^3 crops, 28 training, 8 validation and 12
test sessions (subjects disjoint):

1. ``brainfm fit`` of ``configs/pretrain/quickstart.yaml`` for ``--pretrain-epochs`` (``small`` preset, 8^3 patches);
2. ``brainfm fit`` of ``configs/finetune/seg_demo.yaml`` from that checkpoint, 3. the same from scratch, and
4. ``brainfm fit`` of ``configs/finetune/unet_baseline.yaml``, each for ``--steps`` steps with the same data;
5. ``brainfm evaluate robustness`` of each ``last.ckpt`` on the test split (every modality subset of each session),
   whole volumes through sliding windows, scored in native space against the mask files (Dice, HD95 in mm).

The last checkpoints are compared (the same number of steps for every model; none is picked on the test split).

From the per-case rows it keeps, per session, its full modality set ("all") and that set less one modality
("w/o X", sessions that hold X and another modality), and writes ``results.md`` and ``results.csv`` to ``--out``:
mean Dice and HD95 (mm) per model and condition.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from brainfm_lightning.evaluation.label_efficiency import condition_cases, nanmean

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MODALITIES = ("T1", "T2", "PD", "FLAIR")
UNSEEN_FLAIR = "T2-FLAIR-3D-SPACE"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def brainfm(args: list[str], log: Path, timings: dict[str, float], stage: str) -> None:
    """Run ``brainfm ARGS`` from the repository root, output to ``log``; exit with its tail if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "brainfm_lightning.cli", *args]
    print(f"[{stage}] brainfm {' '.join(args)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    timings[stage] = time.perf_counter() - start
    print(f"[{stage}] done in {timings[stage]:.0f} s (exit {code}; log {log})", flush=True)
    if code != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-30:]), file=sys.stderr)
        sys.exit(f"compare: stage {stage!r} failed with exit status {code}")


def config_args(configs: list[str]) -> list[str]:
    """``--config`` options for config files named relative to ``configs/``, composed left to right."""
    return [item for config in configs for item in ("--config", str(CONFIGS / config))]


def last_checkpoint(folder: Path) -> Path:
    found = sorted(folder.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"compare: no last.ckpt under {folder}")
    return found[-1]


def conditions(cases_csv: Path) -> dict[str, list[dict[str, float]]]:
    """Per-case rows of ``robustness_cases.csv`` grouped into ``all`` and ``w/o X`` (every demo modality listed)."""
    grouped = condition_cases(csv.DictReader(cases_csv.open()), metrics=("dice", "hd95"))
    return {"all": grouped["all"]} | {f"w/o {m}": grouped.get(f"w/o {m}", []) for m in MODALITIES}


def write_results(results: dict[str, dict[str, list[dict[str, float]]]], out: Path, header: str,
                  footer: str = "") -> str:
    """``results.csv`` (model, condition, n_cases, dice, hd95) and the Table-1-style ``results.md``; returns it."""
    names = list(next(iter(results.values())))
    long_rows = [{"model": model, "condition": cond, "n_cases": len(cases),
                  "dice": nanmean([c["dice"] for c in cases]), "hd95": nanmean([c["hd95"] for c in cases])}
                 for model, grouped in results.items() for cond, cases in grouped.items()]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(long_rows[0]))
        writer.writeheader()
        writer.writerows(long_rows)
    counts = {cond: len(cases) for cond, cases in next(iter(results.values())).items()}
    lines = [header, "", "Mean Dice / HD95 (mm) over the test sessions of each condition (n = sessions).", "",
             "| model | " + " | ".join(f"{c} (n={counts[c]})" for c in names) + " |",
             "|---|" + "---|" * len(names)]
    for model in results:
        cells = [next(r for r in long_rows if r["model"] == model and r["condition"] == c) for c in names]
        lines.append(f"| {model} | " + " | ".join(f"{r['dice']:.3f} / {r['hd95']:.1f}" for r in cells) + " |")
    table = "\n".join(lines) + "\n" + footer
    (out / "results.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "compare", help="Tables (default: %(default)s).")
    parser.add_argument("--work", type=Path, default=REPO / "runs/compare",
                        help="Checkpoints, logs, robustness outputs (default: %(default)s).")
    parser.add_argument("--pretrain-epochs", type=int, default=30,
                        help="Pretraining epochs of 7 steps (28 training subjects; default: %(default)s).")
    parser.add_argument("--steps", type=int, default=300,
                        help="Training steps of each segmenter (default: %(default)s).")
    parser.add_argument("--reuse", action="store_true", help="Skip trainings whose last.ckpt already exists.")
    args = parser.parse_args(argv)
    if args.pretrain_epochs < 1 or args.steps < 1:
        parser.error("--pretrain-epochs and --steps must be >= 1")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    work = args.work.resolve()

    def fit(stage: str, configs: list[str], *extra: str) -> Path:
        folder = work / stage
        if not (args.reuse and list(folder.rglob("last.ckpt"))):
            brainfm(["fit", *config_args(configs), "--trainer.default_root_dir", str(folder), *QUIET, *extra],
                    work / "logs" / f"{stage}.log", timings, stage)
        return last_checkpoint(folder)

    brainfm_configs = ["compare/demo_4mm.yaml", "compare/brainfm_32.yaml"]
    pretrained = fit("pretrain", ["pretrain/quickstart.yaml", *brainfm_configs],
                     "--trainer.max_epochs", str(args.pretrain_epochs))
    steps = ["--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "-1"]
    models = {  # stage -> (table name, configs, extra fit arguments)
        "seg_pretrained": ("BrainFM (pretrained)", ["finetune/seg_demo.yaml", *brainfm_configs],
                           ["--model.pretrained", str(pretrained)]),
        "seg_scratch": ("BrainFM (scratch)", ["finetune/seg_demo.yaml", *brainfm_configs], []),
        "unet": ("U-Net (fixed channels)", ["finetune/unet_baseline.yaml", "compare/demo_4mm.yaml",
                                            "compare/unet_32.yaml"], []),
    }
    results = {}
    for stage, (model, configs, extra) in models.items():
        folder = work / stage
        checkpoint = fit(stage, configs, *steps, "--trainer.logger.init_args.save_dir", str(folder), *extra)
        out = folder / "robustness"
        evaluate = ["evaluate", "robustness", *config_args(configs), "--ckpt_path", str(checkpoint)]
        brainfm([*evaluate, "--out", str(out)], work / "logs" / f"{stage}_evaluate.log", timings, f"{stage}_evaluate")
        results[model] = conditions(out / "robustness_cases.csv")
        if stage == "seg_pretrained":  # the same model and sessions with FLAIR under a name it never saw
            unseen = folder / "robustness_unseen"
            brainfm([*evaluate, "--out", str(unseen), "--unseen-name", f"FLAIR={UNSEEN_FLAIR}"],
                    work / "logs" / f"{stage}_unseen.log", timings, f"{stage}_unseen")
            renamed = conditions(unseen / "robustness_cases.csv")["all"]
    total = time.perf_counter() - start
    header = (f"# BrainFM vs U-Net on the SYNTHETIC demo data at 4 mm (test split)\n\n"
              f"`python scripts/compare.py --pretrain-epochs {args.pretrain_epochs} --steps {args.steps}`: "
              f"pretraining {args.pretrain_epochs} epochs, {args.steps} fine-tuning steps per segmenter, "
              f"last checkpoints; wall time {total / 60:.1f} min (" +
              ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in timings.items()) + ").")
    footer = (f"\nBrainFM (pretrained) with FLAIR shown as the unseen name `{UNSEEN_FLAIR}`, all modalities: "
              f"{nanmean([c['dice'] for c in renamed]):.3f} / {nanmean([c['hd95'] for c in renamed]):.1f} "
              f"(n={len(renamed)}); heatmaps: `{work}/*/robustness*/robustness.png`.\n")
    print("\n" + write_results(results, args.out, header, footer))
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end: the steady-state ``brainfm fit`` step against the bare model step on the same batch shapes.

Runs ``brainfm fit`` with a shipped config (the quickstart by default: demo data, prepared cache, device
augmentation, the config's workers and checkpoints; validation off) for ``--steps`` optimizer steps and reads each
batch's data wait and step time from :class:`~brainfm_lightning.callbacks.LoopTiming`. Then, in the same process,
times the bare training step (forward, the three losses, backward, fused AdamW; no loader, no Lightning) of a
network of the same preset on random batches with the modality counts of the batches the fit trained on, and
prints ``bare / fit``: 1.0 means the loop costs nothing over the network. Variants (``--variants``) rerun the fit
with one setting changed, e.g. augmentation off or on the workers, so their cost is measured side by side.

    python benchmarks/end_to_end.py                      # CPU quickstart; make bench runs it
    python benchmarks/end_to_end.py --variants shipped --set trainer.accelerator=gpu ...   # see benchmarks/gpu.sh
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import make_batch, train_step  # noqa: E402

from brainfm_lightning import cli  # noqa: E402
from brainfm_lightning.callbacks import LoopTiming  # noqa: E402
from brainfm_lightning.models import ModalityMAE  # noqa: E402

VARIANTS = {
    "shipped": [],
    "no_augmentation": ["--data.augment", "false"],
    "augment_in_collate": ["--data.augment_on", "collate"],
    "torchio_in_workers": ["--data.augment_on", "workers"],
    "no_workers": ["--data.num_workers", "0"],
}


def fit_timings(configs: list[str], steps: int, root: Path, extra: list[str]) -> tuple[list, dict]:
    """Run ``brainfm fit`` and return LoopTiming's per-batch records and the network's config."""
    captured = []

    class CapturingCLI(cli.BrainFMCLI):
        def after_fit(self) -> None:
            super().after_fit()
            captured.append(self)

    original, cli.BrainFMCLI = cli.BrainFMCLI, CapturingCLI
    try:
        config_args = [part for config in configs for part in ("--config", config)]
        cli.run_lightning(["fit", *config_args, "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
                           "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
                           *extra])
    finally:
        cli.BrainFMCLI = original
    run = captured[0]
    timing = next((c for c in run.trainer.callbacks if isinstance(c, LoopTiming)), None)
    if timing is None:
        raise SystemExit(f"{configs} has no LoopTiming callback; add brainfm_lightning.callbacks.LoopTiming")
    return list(timing.history), dict(run.model.net.config)


def bare_step_ms(net_config: dict, shapes: list[tuple[int, ...]], repeats: int, device: str) -> dict:
    """Median bare step time (ms) of every distinct batch shape (modalities per session)."""
    torch.manual_seed(0)
    net = ModalityMAE(**net_config).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    batches = {shape: make_batch(net, list(shape), max(shape), device) for shape in set(shapes)}
    times: dict[tuple[int, ...], list[float]] = {shape: [] for shape in batches}
    for batch in batches.values():  # warm-up
        train_step(net, optimizer, batch)
    for _ in range(repeats):
        for shape, batch in batches.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_step(net, optimizer, batch)
            if device == "cuda":
                torch.cuda.synchronize()
            times[shape].append(1e3 * (time.perf_counter() - start))
    return {shape: statistics.median(values) for shape, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", help="Fit config(s), composed in order (default: the "
                        "quickstart).")
    parser.add_argument("--steps", type=int, default=80, help="Optimizer steps per fit (default: %(default)s).")
    parser.add_argument("--warmup", type=int, default=15, help="First batches left out (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=5, help="Bare steps per batch shape (default: %(default)s).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Extra fit overrides for every variant, e.g. trainer.accelerator=gpu.")
    parser.add_argument("--out", type=Path, default=Path("bench-end-to-end.json"))
    args = parser.parse_args()
    args.config = args.config or ["configs/pretrain/quickstart.yaml"]
    extra = [part for item in args.set for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    device = "cuda" if any(s.startswith("trainer.accelerator=gpu") for s in args.set) else "cpu"
    results: dict = {"config": args.config, "steps": args.steps, "warmup": args.warmup, "overrides": args.set,
                     "threads": torch.get_num_threads(), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="brainfm-e2e-") as scratch:
        for name in args.variants:
            history, net_config = fit_timings(args.config, args.steps, Path(scratch) / name,
                                              VARIANTS[name] + extra)
            steady = history[args.warmup:]
            if not steady:
                raise SystemExit(f"no batches after the warm-up: raise --steps above --warmup ({args.warmup})")
            shapes = [tuple(sorted(step.modalities_per_session, reverse=True)) for step in steady]
            bare = bare_step_ms(net_config, shapes, args.repeats, device)
            fit_ms = statistics.mean(step.data_wait_ms + step.step_ms for step in steady)
            bare_ms = statistics.mean(bare[shape] for shape in shapes)
            results["variants"][name] = {
                "fit_step_ms": fit_ms, "bare_step_ms": bare_ms, "ratio": bare_ms / fit_ms,
                "data_wait_ms": statistics.mean(step.data_wait_ms for step in steady),
                "compute_ms": statistics.mean(step.step_ms for step in steady),
                "batches": len(steady), "batch_shapes": {str(k): v for k, v in Counter(shapes).items()},
            }
    print(f"{' + '.join(args.config)}: steady state of {args.steps} steps after {args.warmup} warm-up batches, "
          f"validation off; bare step = network + losses + fused AdamW on the same batch shapes")
    print(f"{'variant':<20}{'fit ms':>9}{'wait ms':>9}{'step ms':>9}{'bare ms':>9}{'bare/fit':>10}")
    for name, row in results["variants"].items():
        print(f"{name:<20}{row['fit_step_ms']:>9.1f}{row['data_wait_ms']:>9.1f}{row['compute_ms']:>9.1f}"
              f"{row['bare_step_ms']:>9.1f}{row['ratio']:>10.2f}")
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

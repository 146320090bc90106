"""End to end: the steady-state ``brainfm fit`` step against the bare model step on the same batch shapes.

Runs ``brainfm fit`` with a shipped config (the quickstart by default: demo data, prepared cache, no
augmentation, the config's workers and checkpoints; validation off) for ``--steps`` optimizer steps and reads each
batch's data wait and compute time from :class:`~brainfm_lightning.callbacks.LoopTiming`. Interleaved with the fit
(after every third batch) it times the bare training step (forward, the three losses, backward, fused AdamW; no
loader, no Lightning) of a twin network on a random batch with the modality counts of the batch just trained, and
prints ``mean bare / mean fit``: 1.0 means the loop costs nothing over the network. Interleaving puts both under
the same conditions (workers alive, the machine's load of the moment); a batch that follows a probe is left out of
the fit's figures, since the probe sits in its data wait. Variants (``--variants``) rerun the fit with one setting
changed, e.g. device augmentation on (``augment_on_device``) or in the workers, so their cost is measured side by
side. Where workers augment
(``augment_in_collate``, ``torchio_in_workers``) they keep computing during the probe too, so on a machine with few
cores their ratio understates what they cost: compare those variants by ``fit ms``.

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

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import make_batch, train_step  # noqa: E402

from brainfm_lightning import cli  # noqa: E402
from brainfm_lightning.callbacks import LoopTiming  # noqa: E402
from brainfm_lightning.models import ModalityMAE  # noqa: E402

VARIANTS = {
    "shipped": [],
    "no_augmentation": ["--data.augment", "false"],
    "augment_on_device": ["--data.augment", "true"],
    "augment_in_collate": ["--data.augment", "true", "--data.augment_on", "collate"],
    "torchio_in_workers": ["--data.augment", "true", "--data.augment_on", "workers"],
    "no_workers": ["--data.num_workers", "0"],
}


class BareStepProbe(L.Callback):
    """After every ``every``-th batch, times one bare step of a twin network on a batch of the same shape."""

    def __init__(self, every: int = 3) -> None:
        self.every = every
        self.bare_ms: dict[int, float] = {}  # batch number (from 0) -> bare step time of its shape
        self.seen = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(0)
        self.device = pl_module.device
        self.net = ModalityMAE(**pl_module.net.config).to(self.device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-4, fused=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: dict,
                           batch_idx: int) -> None:
        self.seen += 1
        if self.seen % self.every:
            return
        shape = sorted(batch["present"].sum(dim=1).tolist(), reverse=True)
        bare = make_batch(self.net, shape, max(shape), self.device.type)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(self.net, self.optimizer, bare)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.bare_ms[self.seen - 1] = 1e3 * (time.perf_counter() - start)


def fit_timings(configs: list[str], steps: int, root: Path, extra: list[str]) -> tuple[list, dict[int, float]]:
    """Run ``brainfm fit`` with a :class:`BareStepProbe`; LoopTiming's per-batch records and the probe's times."""
    captured, probe = [], BareStepProbe()

    class CapturingCLI(cli.BrainFMCLI):
        def before_fit(self) -> None:
            self.trainer.callbacks.append(probe)

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
    timing = next((c for c in captured[0].trainer.callbacks if isinstance(c, LoopTiming)), None)
    if timing is None:
        raise SystemExit(f"{configs} has no LoopTiming callback; add brainfm_lightning.callbacks.LoopTiming")
    return list(timing.history), probe.bare_ms


def summarise(history: list, bare_ms: dict[int, float], warmup: int) -> dict:
    """Mean fit and bare step times after the warm-up; batches right after a probe are not the fit's."""
    after_probe = {number + 1 for number in bare_ms}
    fit = [step for number, step in enumerate(history) if number >= warmup and number not in after_probe]
    bare = [ms for number, ms in bare_ms.items() if number >= warmup]
    if not fit or not bare:
        raise SystemExit(f"too few batches after the warm-up: raise --steps well above --warmup ({warmup})")
    fit_ms, bare_mean = statistics.mean(s.data_wait_ms + s.step_ms for s in fit), statistics.mean(bare)
    shapes = Counter(tuple(sorted(step.modalities_per_session, reverse=True)) for step in history)
    return {"fit_step_ms": fit_ms, "bare_step_ms": bare_mean, "ratio": bare_mean / fit_ms,
            "data_wait_ms": statistics.mean(s.data_wait_ms for s in fit),
            "compute_ms": statistics.mean(s.step_ms for s in fit), "fit_batches": len(fit), "bare_steps": len(bare),
            "batch_shapes": {str(k): v for k, v in shapes.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", help="Fit config(s), composed in order (default: the "
                        "quickstart).")
    parser.add_argument("--steps", type=int, default=90, help="Optimizer steps per fit (default: %(default)s).")
    parser.add_argument("--warmup", type=int, default=15, help="First batches left out (default: %(default)s).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Extra fit overrides for every variant, e.g. trainer.accelerator=gpu.")
    parser.add_argument("--out", type=Path, default=Path("bench-end-to-end.json"))
    args = parser.parse_args()
    args.config = args.config or ["configs/pretrain/quickstart.yaml"]
    extra = [part for item in args.set for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    results: dict = {"config": args.config, "steps": args.steps, "warmup": args.warmup, "overrides": args.set,
                     "threads": torch.get_num_threads(), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="brainfm-e2e-") as scratch:
        for name in args.variants:
            history, bare_ms = fit_timings(args.config, args.steps, Path(scratch) / name, VARIANTS[name] + extra)
            results["variants"][name] = summarise(history, bare_ms, args.warmup)
    print(f"{' + '.join(args.config)}: steady state of {args.steps} steps after {args.warmup} warm-up batches, "
          f"validation off; bare step (network + losses + fused AdamW, same batch shapes) interleaved")
    print(f"{'variant':<20}{'fit ms':>9}{'wait ms':>9}{'step ms':>9}{'bare ms':>9}{'bare/fit':>10}")
    for name, row in results["variants"].items():
        print(f"{name:<20}{row['fit_step_ms']:>9.1f}{row['data_wait_ms']:>9.1f}{row['compute_ms']:>9.1f}"
              f"{row['bare_step_ms']:>9.1f}{row['ratio']:>10.2f}")
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Side-by-side CPU benchmarks of the pretraining step; prints a table and writes bench-results.json.

Every ratio is measured within one run, alternating the compared cases, warm-up excluded, median of repeats,
because these machines are noisy. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from brainfm_lightning.losses import covariance_loss, masked_mse_loss, variance_loss
from brainfm_lightning.masking import keep_counts
from brainfm_lightning.models import ModalityMAE


def forward_flops(net: ModalityMAE, modalities_per_session: list[int]) -> float:
    """Analytic forward FLOPs (2 per multiply-add) of the linear layers and attention, valid tokens only."""
    cfg, tokens_per_modality = net.config, net.tokens_per_modality
    dim, dec_dim = cfg["embed_dim"], cfg["decoder_embed_dim"]
    patch_voxels = net.patch_size[0] * net.patch_size[1] * net.patch_size[2]
    total = 0.0
    for count in modalities_per_session:
        valid = count * tokens_per_modality
        visible = int(keep_counts(torch.ones(1, valid, dtype=torch.bool), net.mask_ratio)[0])
        total += 2 * valid * patch_voxels * dim  # patch embedding (all valid tokens are embedded)
        total += cfg["depth"] * (2 * 12 * visible * dim**2 + 4 * visible**2 * dim)  # encoder blocks
        total += 2 * visible * dim * dec_dim  # decoder embedding
        total += cfg["decoder_depth"] * (2 * 12 * valid * dec_dim**2 + 4 * valid**2 * dec_dim)  # decoder blocks
        total += 2 * valid * dec_dim * patch_voxels  # reconstruction head
    return total


def train_step(net: ModalityMAE, optimizer: torch.optim.Optimizer, batch: tuple) -> None:
    images, embeddings, present = batch
    out = net(images, embeddings, present)
    z = out.visible_features()
    loss = masked_mse_loss(out.pred, out.target, out.is_masked) + 0.1 * variance_loss(z) + 0.003 * covariance_loss(z)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def make_batch(net: ModalityMAE, modalities_per_session: list[int], most: int) -> tuple:
    b = len(modalities_per_session)
    present = torch.arange(most)[None, :] < torch.tensor(modalities_per_session)[:, None]
    return torch.randn(b, most, *net.img_size), torch.randn(b, most, net.modality_dim), present


def step_time_vs_modalities(net: ModalityMAE, repeats: int, sessions: int) -> dict[str, dict[str, float]]:
    """Median step time for batches whose sessions all have k = 1..4 modalities, relative to k = 1."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    batches = {k: make_batch(net, [k] * sessions, k) for k in range(1, 5)}
    for batch in batches.values():  # warm-up
        train_step(net, optimizer, batch)
    times: dict[int, list[float]] = {k: [] for k in batches}
    for _ in range(repeats):
        for k, batch in batches.items():  # alternate the cases so drifts hit all of them alike
            start = time.perf_counter()
            train_step(net, optimizer, batch)
            times[k].append(time.perf_counter() - start)
    base_time, base_flops = statistics.median(times[1]), forward_flops(net, [1] * sessions)
    return {
        str(k): {
            "step_ms": 1000 * statistics.median(times[k]),
            "measured_ratio": statistics.median(times[k]) / base_time,
            "flop_model_ratio": forward_flops(net, [k] * sessions) / base_flops,
        }
        for k in times
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", help="Model preset (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats per case (default: %(default)s).")
    parser.add_argument("--sessions", type=int, default=2, help="Sessions per batch (default: %(default)s).")
    parser.add_argument("--out", default="bench-results.json", help="JSON output (default: %(default)s).")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = ModalityMAE.from_preset(args.preset)
    results = {
        "preset": args.preset,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "model_flops_per_session": {str(k): forward_flops(net, [k]) for k in range(1, 5)},
        "step_time_vs_modalities": step_time_vs_modalities(net, args.repeats, args.sessions),
    }
    print(f"preset {args.preset}, {args.sessions} sessions per batch, median of {args.repeats}, fp32 CPU")
    print(f"{'modalities':>10} {'fwd GFLOP/session':>18} {'step ms':>9} {'measured x':>11} {'FLOP model x':>13}")
    for k, row in results["step_time_vs_modalities"].items():
        gflops = results["model_flops_per_session"][k] / 1e9
        print(f"{k:>10} {gflops:>18.2f} {row['step_ms']:>9.1f} {row['measured_ratio']:>11.2f} "
              f"{row['flop_model_ratio']:>13.2f}")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

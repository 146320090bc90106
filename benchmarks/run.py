"""Side-by-side CPU benchmarks of the pretraining step; prints a table and writes bench-results.json.

Every ratio is measured within one run, alternating the compared cases, warm-up excluded, median of repeats
(the speed-ups: median of the per-round ratios), because these machines are noisy. The optimizer is the fused
AdamW of ``configs/pretrain/quickstart.yaml``. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from brainfm_lightning.losses import covariance_loss, masked_mse_loss, variance_loss
from brainfm_lightning.masking import keep_counts
from brainfm_lightning.models import ModalityMAE

WARMUP_STEPS = 3


def forward_flops(net: ModalityMAE, modalities_per_session: list[int], padded: bool = False,
                  attention: bool = True) -> float:
    """Analytic forward FLOPs (2 per multiply-add) of the linear layers and, optionally, attention.

    Pad-free: valid tokens only, the reconstruction head on the masked ones. Padded-dense: every session computes
    the batch's most visible tokens in the encoder and every token of the padded batch in the decoder and head.
    Per-slot terms (modality projections, the scale/shift of every Conditional LayerNorm) count every slot.
    """
    cfg, tokens_per_modality = net.config, net.tokens_per_modality
    dim, dec_dim, cond = cfg["embed_dim"], cfg["decoder_embed_dim"], net.modality_dim
    depth, dec_depth = cfg["depth"], cfg["decoder_depth"]
    hidden, dec_hidden = int(dim * cfg["mlp_ratio"]), int(dec_dim * cfg["mlp_ratio"])

    def visible_count(modalities: int) -> int:
        valid = torch.ones(1, modalities * tokens_per_modality, dtype=torch.bool)
        return int(keep_counts(valid, net.mask_ratio)[0])

    most = max(modalities_per_session)
    most_visible = visible_count(most)  # K: the encoder's padded width, and the decoder embedding's in both paths
    total = 0.0
    for count in modalities_per_session:
        valid, own_visible = count * tokens_per_modality, visible_count(count)
        visible = most_visible if padded else own_visible
        decoded = most * tokens_per_modality if padded else valid
        predicted = decoded if padded else valid - own_visible
        total += 2 * visible * net.patch_voxels * dim  # patch embedding of the visible tokens
        total += 2 * most * cond * (dim + dec_dim)  # modality projections, per slot
        total += 2 * most * cond * 2 * ((2 * depth + 1) * dim + (2 * dec_depth + 1) * dec_dim)  # CLN gamma/beta
        total += depth * 2 * visible * (4 * dim**2 + 2 * dim * hidden)  # encoder qkv, proj, MLP
        total += 2 * most_visible * dim * dec_dim  # decoder embedding of the padded [B, K, D] features
        total += dec_depth * 2 * decoded * (4 * dec_dim**2 + 2 * dec_dim * dec_hidden)  # decoder blocks
        total += 2 * predicted * dec_dim * net.patch_voxels  # reconstruction head
        if attention:  # q @ k and attention @ v
            total += depth * 4 * visible**2 * dim + dec_depth * 4 * decoded**2 * dec_dim
    return total


def train_step(net: ModalityMAE, optimizer: torch.optim.Optimizer, batch: tuple,
               autocast: torch.dtype | None = None) -> None:
    images, embeddings, present = batch
    with torch.autocast(images.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = net(images, embeddings, present)
        z = out.visible_features()
        loss = (masked_mse_loss(out.pred_masked, out.target_masked) + 0.1 * variance_loss(z)
                + 0.003 * covariance_loss(z))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def make_batch(net: ModalityMAE, modalities_per_session: list[int], most: int, device: str = "cpu") -> tuple:
    b = len(modalities_per_session)
    present = torch.arange(most)[None, :] < torch.tensor(modalities_per_session)[:, None]
    batch = torch.randn(b, most, *net.img_size), torch.randn(b, most, net.modality_dim), present
    return tuple(x.to(device) for x in batch)


def timed_step(net: ModalityMAE, optimizer: torch.optim.Optimizer, batch: tuple,
               autocast: torch.dtype | None = None) -> float:
    """Seconds of one training step, waiting for the device to finish."""
    device = batch[0].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train_step(net, optimizer, batch, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def compare_paths(preset: str, modalities_per_session: list[int], repeats: int, device: str = "cpu",
                  autocast: torch.dtype | None = None, compile_blocks: bool = False,
                  **net_options: object) -> dict[str, float]:
    """Pad-free vs padded-dense training step on the same weights and batch, alternating, warm-up excluded."""
    torch.manual_seed(0)
    pad_free = ModalityMAE.from_preset(preset, pad_free=True, **net_options).to(device)
    padded = ModalityMAE.from_preset(preset, pad_free=False, **net_options).to(device)
    padded.load_state_dict(pad_free.state_dict())
    if compile_blocks:
        for net in (pad_free, padded):
            net.encoder.compile_blocks()
            net.decoder.compile_blocks()
    batch = make_batch(pad_free, modalities_per_session, max(modalities_per_session), device)
    nets = {"pad_free": pad_free, "padded": padded}
    optimizers = {name: torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True) for name, net in nets.items()}
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(WARMUP_STEPS):  # the first steps pay for allocating (page-faulting) the activations
        for name, net in nets.items():
            train_step(net, optimizers[name], batch, autocast)
    for _ in range(repeats):
        for name, net in nets.items():
            times[name].append(timed_step(net, optimizers[name], batch, autocast))
    padded_ms, pad_free_ms = (1000 * statistics.median(times[n]) for n in ("padded", "pad_free"))
    # each round times the two paths back to back: the median of the per-round ratios cancels slow drifts of a
    # shared machine that the ratio of the two medians keeps
    paired = [padded / pad_free for padded, pad_free in zip(times["padded"], times["pad_free"])]
    return {
        "speedup": statistics.median(paired),
        "speedup_of_medians": padded_ms / pad_free_ms,
        "theory": forward_flops(pad_free, modalities_per_session, padded=True)
        / forward_flops(pad_free, modalities_per_session),
        "valid_token_fraction": valid_fraction(modalities_per_session),
        "padded_ms": padded_ms,
        "pad_free_ms": pad_free_ms,
        "train_flops_pad_free": 3 * forward_flops(pad_free, modalities_per_session),  # forward + backward
    }


def valid_fraction(modalities_per_session: list[int]) -> float:
    """Share of valid tokens in the padded batch."""
    return sum(modalities_per_session) / (len(modalities_per_session) * max(modalities_per_session))


PROBE = """
import sys, torch
sys.path.insert(0, {folder!r})
from run import make_batch, train_step
from brainfm_lightning.models import ModalityMAE

def status_kb(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])

torch.manual_seed(0)
net = ModalityMAE.from_preset({preset!r}, pad_free={pad_free!r})
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
batch = make_batch(net, {sessions!r}, {most})
for _ in range(2):  # warm-up: optimizer state, lazily loaded kernels and thread pools are not the step's
    train_step(net, optimizer, batch)
peaks = []
for _ in range(3):
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak RSS (VmHWM) to the current RSS
        f.write("5")
    before = status_kb("VmRSS")
    train_step(net, optimizer, batch)
    peaks.append(status_kb("VmHWM") - before)
print(sorted(peaks)[1] / 1024)
"""


def peak_memory_mb(preset: str, modalities_per_session: list[int], pad_free: bool) -> float:
    """Peak RSS growth of one training step after warm-up (median of 3), in a fresh process per path.

    glibc's mmap threshold is fixed so that large tensors go back to the system when freed; otherwise freed
    activations stay in the heap and the next step's growth would read as zero.
    """
    code = PROBE.format(folder=str(Path(__file__).parent), preset=preset, pad_free=pad_free,
                        sessions=modalities_per_session, most=max(modalities_per_session))
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(result.stdout.strip().splitlines()[-1])


def step_time_vs_modalities(net: ModalityMAE, repeats: int, sessions: int) -> dict[str, dict[str, float]]:
    """Median step time for batches whose sessions all have k = 1..4 modalities, relative to k = 1."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    batches = {k: make_batch(net, [k] * sessions, k) for k in range(1, 5)}
    for _ in range(WARMUP_STEPS):
        for batch in batches.values():
            train_step(net, optimizer, batch)
    times: dict[int, list[float]] = {k: [] for k in batches}
    for _ in range(repeats):
        for k, batch in batches.items():  # alternate the cases so drifts hit all of them alike
            times[k].append(timed_step(net, optimizer, batch))
    base_flops = forward_flops(net, [1] * sessions)
    return {
        str(k): {
            "step_ms": 1000 * statistics.median(times[k]),
            "measured_ratio": statistics.median(t / t1 for t, t1 in zip(times[k], times[1], strict=True)),
            "flop_model_ratio": forward_flops(net, [k] * sessions) / base_flops,
        }
        for k in times
    }


def bf16_vs_fp32(preset: str, modalities_per_session: list[int], repeats: int, **net_options: object) -> dict:
    """Training step under bf16 autocast against fp32 on the same weights and batch, alternating (CPU).

    Also how far bf16 moves the step: relative difference of the loss and cosine similarity of the gradients.
    """
    torch.manual_seed(0)
    nets = {name: ModalityMAE.from_preset(preset, **net_options) for name in ("fp32", "bf16")}
    nets["bf16"].load_state_dict(nets["fp32"].state_dict())
    batch = make_batch(nets["fp32"], modalities_per_session, max(modalities_per_session))
    autocast = {"fp32": None, "bf16": torch.bfloat16}
    losses, gradients = {}, {}
    for name, net in nets.items():
        generator = torch.Generator().manual_seed(0)  # the same mask for both
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast[name] is not None):
            out = net(*batch, generator)
            loss = masked_mse_loss(out.pred_masked, out.target_masked)
        loss.backward()
        losses[name] = float(loss.detach())
        gradients[name] = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]).double()
        net.zero_grad(set_to_none=True)
    optimizers = {name: torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True) for name, net in nets.items()}
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(WARMUP_STEPS):
        for name, net in nets.items():
            train_step(net, optimizers[name], batch, autocast[name])
    for _ in range(repeats):
        for name, net in nets.items():
            times[name].append(timed_step(net, optimizers[name], batch, autocast[name]))
    paired = [fp32 / bf16 for fp32, bf16 in zip(times["fp32"], times["bf16"], strict=True)]
    return {
        "speedup": statistics.median(paired),
        "fp32_ms": 1000 * statistics.median(times["fp32"]), "bf16_ms": 1000 * statistics.median(times["bf16"]),
        "loss_relative_difference": abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"]),
        "gradient_cosine": float(torch.nn.functional.cosine_similarity(gradients["bf16"], gradients["fp32"], dim=0)),
    }


def matmul_gflops(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a ``size``-square matmul in fp32 and bf16 (AMX/AVX-512 BF16 where the CPU has them)."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        elapsed = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            elapsed.append(time.perf_counter() - start)
        rates[name] = 2 * size**3 / statistics.median(elapsed) / 1e9
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", help="Model preset (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=7, help="Timed repeats per case (default: %(default)s).")
    parser.add_argument("--out", default="bench-results.json", help="JSON output (default: %(default)s).")
    args = parser.parse_args()
    mixed, uniform = [1, 2, 3, 4] * 2, [4] * 8
    results = {"preset": args.preset, "device": "cpu", "threads": torch.get_num_threads(), "repeats": args.repeats}
    results["train_step_speedup_mixed"] = compare_paths(args.preset, mixed, args.repeats)
    results["train_step_speedup_uniform"] = compare_paths(args.preset, uniform, args.repeats)
    for name, sessions in (("mixed", mixed), ("uniform", uniform)):
        results[f"peak_rss_mb_{name}"] = {"pad_free": peak_memory_mb(args.preset, sessions, True),
                                          "padded": peak_memory_mb(args.preset, sessions, False)}
    net = ModalityMAE.from_preset(args.preset)
    results["model_flops_per_session"] = {str(k): 3 * forward_flops(net, [k]) for k in range(1, 5)}  # fwd + bwd
    results["step_time_vs_modalities"] = step_time_vs_modalities(net, args.repeats, sessions=2)
    results["matmul_gflops"] = matmul_gflops()
    results["bf16_vs_fp32"] = {args.preset: bf16_vs_fp32(args.preset, mixed, args.repeats),
                               "base_64": bf16_vs_fp32("base", [3, 2], max(3, args.repeats // 2), img_size=64)}

    print(f"preset {args.preset}, fp32 CPU, {results['threads']} threads, median of {args.repeats}, alternating")
    for key, target in (("train_step_speedup_mixed", 1.5), ("train_step_speedup_uniform", 0.95)):
        row = results[key]
        print(f"{key:28} {row['speedup']:5.2f}  (theory {row['theory']:.2f} at {row['valid_token_fraction']:.0%} "
              f"valid tokens; padded {row['padded_ms']:.0f} ms, pad-free {row['pad_free_ms']:.0f} ms; "
              f"target >= {target})")
    for name in ("mixed", "uniform"):
        memory = results[f"peak_rss_mb_{name}"]
        print(f"{'peak RSS of a step, ' + name:28} pad-free {memory['pad_free']:.0f} MB, "
              f"padded {memory['padded']:.0f} MB ({memory['pad_free'] / memory['padded']:.2f}x)")
    print(f"{'modalities':>10} {'train GFLOP/session':>20} {'step ms':>9} {'measured x':>11} {'FLOP model x':>13}")
    for k, row in results["step_time_vs_modalities"].items():
        gflops = results["model_flops_per_session"][k] / 1e9
        print(f"{k:>10} {gflops:>20.2f} {row['step_ms']:>9.1f} {row['measured_ratio']:>11.2f} "
              f"{row['flop_model_ratio']:>13.2f}")
    rates = results["matmul_gflops"]
    print(f"2048^2 matmul: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s "
          f"({rates['bf16'] / rates['fp32']:.1f}x)")
    for name, row in results["bf16_vs_fp32"].items():
        print(f"{'bf16 autocast step, ' + name:28} {row['speedup']:5.2f}x fp32 ({row['fp32_ms']:.0f} -> "
              f"{row['bf16_ms']:.0f} ms); loss differs by {row['loss_relative_difference']:.1e} (relative), "
              f"gradient cosine {row['gradient_cosine']:.4f}")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

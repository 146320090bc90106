"""GPU benchmark of the pretraining step: base preset, 128^3 crops, bf16 autocast; pad-free vs padded-dense and MFU.

Same protocol as ``benchmarks/run.py`` (same weights and batch, alternating, warm-up excluded, median), on one
CUDA device; prints a table and writes ``bench-gpu.json``. ``benchmarks/gpu.sh`` runs it with a time limit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import compare_paths, make_batch, train_step  # noqa: E402

from brainfm_lightning.models import ModalityMAE  # noqa: E402

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, SXM parts); pass --peak-tflops for anything else.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The device's dense bf16 peak: ``given``, else looked up by the CUDA device name, else None."""
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def peak_memory_gib(preset: str, sessions: list[int], pad_free: bool, device: str, autocast: torch.dtype | None,
                    **net_options: object) -> float | None:
    """CUDA max allocated during one warm training step, GiB (None off CUDA)."""
    if not device.startswith("cuda"):
        return None
    net = ModalityMAE.from_preset(preset, pad_free=pad_free, **net_options).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    batch = make_batch(net, sessions, max(sessions), device)
    train_step(net, optimizer, batch, autocast)  # warm-up: optimizer state
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(net, optimizer, batch, autocast)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    del net, optimizer, batch
    torch.cuda.empty_cache()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="base", help="Model preset (default: %(default)s).")
    parser.add_argument("--img-size", type=int, default=128, help="Crop edge in voxels (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=7, help="Timed repeats per case (default: %(default)s).")
    parser.add_argument("--sessions-per-count", type=int, default=2,
                        help="Sessions with each of 1..4 modalities in the mixed batch (default: %(default)s).")
    parser.add_argument("--device", default="cuda", help="Device (default: %(default)s).")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                        help="Autocast precision (default: %(default)s).")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks.")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Recompute block activations.")
    parser.add_argument("--peak-tflops", type=float, help="Device peak for MFU (default: looked up by name).")
    parser.add_argument("--out", default="bench-gpu.json", help="JSON output (default: %(default)s).")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible (torch {torch.__version__})")
    torch.backends.cuda.matmul.allow_tf32 = True
    autocast = torch.bfloat16 if args.dtype == "bf16" else None
    options = dict(img_size=args.img_size, gradient_checkpointing=args.gradient_checkpointing)
    device = torch.device(args.device)
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else args.device
    results: dict[str, object] = {"device": name, "preset": args.preset, "img_size": args.img_size,
                                  "dtype": args.dtype, "compile": args.compile, "peak_tflops": peak}
    mixed, uniform = [1, 2, 3, 4] * args.sessions_per_count, [4] * (4 * args.sessions_per_count)
    print(f"{name}: preset {args.preset}, {args.img_size}^3, {args.dtype}, compile {args.compile}, "
          f"median of {args.repeats}, alternating")
    for label, sessions in (("mixed", mixed), ("uniform", uniform)):
        row = compare_paths(args.preset, sessions, args.repeats, args.device, autocast, args.compile, **options)
        row["mfu_pad_free"] = (row["train_flops_pad_free"] / (row["pad_free_ms"] / 1000) / (peak * 1e12)
                               if peak else None)
        row["peak_memory_gib"] = {"pad_free": peak_memory_gib(args.preset, sessions, True, args.device, autocast,
                                                              **options),
                                  "padded": peak_memory_gib(args.preset, sessions, False, args.device, autocast,
                                                            **options)}
        results[f"train_step_speedup_{label}"] = row
        mfu = f"{row['mfu_pad_free']:.1%}" if row["mfu_pad_free"] is not None else "n/a (unknown peak)"
        memory = row["peak_memory_gib"]
        memory_text = (f"; max allocated pad-free {memory['pad_free']:.1f} GiB, padded {memory['padded']:.1f} GiB"
                       if memory["pad_free"] is not None else "")
        print(f"train_step_speedup_{label:8} {row['speedup']:5.2f} (theory {row['theory']:.2f}; padded "
              f"{row['padded_ms']:.1f} ms, pad-free {row['pad_free_ms']:.1f} ms; pad-free MFU {mfu}{memory_text})")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

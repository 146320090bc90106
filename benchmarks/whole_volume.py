"""Peak memory and time of segmenting one whole 1 mm head: 180 x 220 x 180 voxels, 4 sequences.

Runs ``brainfm segment``'s path (``segment_case``: load, preprocess, sliding windows with a Gaussian blend stitched
on the CPU, the mask mapped back onto the first scan) with a randomly initialised ``small`` segmenter at 64^3
windows, in a fresh process per setting so each peak is its own. Reports the process's peak resident memory
(``ru_maxrss``) above the resident memory after imports, the wall time, and on a GPU the peak allocated device
memory. Run with ``python benchmarks/whole_volume.py`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = (180, 220, 180)
NAMES = ("FLAIR", "T1w", "T2w", "PD")


def write_session(folder: Path) -> dict[str, Path]:
    """Four head-like 1 mm scans (an ellipsoid with texture and noise, int16 as scanners store them)."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    axes = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    head = sum((a / r) ** 2 for a, r in zip(axes, (0.8, 0.85, 0.8), strict=True)) < 1
    scans = {}
    for k, name in enumerate(NAMES):
        data = rng.normal(20, 5, SHAPE) + head * (400 + 100 * k + rng.normal(0, 30, SHAPE))
        path = folder / f"{name}.nii.gz"
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored LPS, as DICOM converters often write it
        nib.save(nib.Nifti1Image(np.clip(data, 0, None).astype(np.int16), affine), path)
        scans[name] = path
    return scans


def measure(sw_batch_size: int, overlap: float, device: str) -> dict[str, float]:
    """Segment the session once in this process; returns the memory and time figures."""
    import numpy as np
    import torch

    from brainfm_lightning.commands.segment import segment_case
    from brainfm_lightning.modalities import ModalityTable
    from brainfm_lightning.models import ModalityMAE
    from brainfm_lightning.models.seg_head import ModalityUNETR

    torch.manual_seed(0)
    network = ModalityUNETR(ModalityMAE.from_preset("small", img_size=64), num_classes=2, feature_size=16)
    dim = network.net.modality_dim
    vectors = np.random.default_rng(1).normal(size=(len(NAMES), dim)).astype(np.float32)
    network.modality_table = ModalityTable(names=list(NAMES), vectors=vectors / np.linalg.norm(vectors, axis=1,
                                           keepdims=True), encoder_id="random", texts=list(NAMES))
    with tempfile.TemporaryDirectory() as folder:
        scans = write_session(Path(folder))
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        labels, _ = segment_case(network, scans, 1.0, (), sw_batch_size, overlap, device=device)
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"peak_rss_mib": peak, "rss_after_imports_mib": baseline, "wall_s": seconds,
              "shape": list(labels.shape), "sw_batch_size": sw_batch_size, "overlap": overlap}
    if device == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default=None, help="Also write the results as JSON here.")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "sw_batch_size,overlap": measure here
    args = parser.parse_args(argv)
    if args.one:
        batch, overlap = args.one.split(",")
        print(json.dumps(measure(int(batch), float(overlap), args.device)))
        return 0
    results = []
    for batch, overlap in ((1, 0.25), (4, 0.25), (2, 0.5)):
        output = subprocess.run([sys.executable, __file__, "--one", f"{batch},{overlap}", "--device", args.device],
                                capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    print(f"whole 1 mm head {SHAPE} x {len(NAMES)} sequences, small segmenter, 64^3 windows, {args.device}:")
    print("| sw_batch_size | overlap | peak RSS (MiB) | after imports (MiB) | wall (s) |" +
          (" peak CUDA (MiB) |" if args.device == "cuda" else ""))
    for r in results:
        cuda = f" {r['peak_cuda_mib']:.0f} |" if "peak_cuda_mib" in r else ""
        print(f"| {r['sw_batch_size']} | {r['overlap']} | {r['peak_rss_mib']:.0f} | {r['rss_after_imports_mib']:.0f} "
              f"| {r['wall_s']:.1f} |{cuda}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

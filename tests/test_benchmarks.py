"""The benchmarks' FLOP model against torch's FLOP counter, and the GPU script's CPU dry run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from run import forward_flops, make_batch  # noqa: E402

from brainfm_lightning.models import ModalityMAE  # noqa: E402


@pytest.mark.parametrize("pad_free", [True, False])
@pytest.mark.parametrize("sessions", [[1, 2, 3], [3, 3], [2, 1, 1, 2]])
def test_flop_model_matches_the_counted_linear_layers(pad_free, sessions):
    net = ModalityMAE.from_preset("test", pad_free=pad_free, mask_ratio=0.7)
    with FlopCounterMode(display=False) as counter:
        net(*make_batch(net, sessions, max(sessions)))
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    linear = counts.get("aten.addmm", 0) + counts.get("aten.mm", 0) + counts.get("aten.bmm", 0)
    assert linear == forward_flops(net, sessions, padded=not pad_free, attention=False)


def test_gpu_script_dry_run_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cpu", "--dtype", "fp32", "--preset", "test",
               "--img-size", "32", "--repeats", "1", "--sessions-per-count", "1", "--out", str(out)]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "train_step_speedup_mixed" in printed and "train_step_speedup_uniform" in printed
    results = json.loads(out.read_text())
    row = results["train_step_speedup_mixed"]
    assert row["speedup"] > 0 and row["theory"] > 1 and row["train_flops_pad_free"] > 0
    assert results["train_step_speedup_uniform"]["valid_token_fraction"] == 1.0


def test_gpu_script_names_a_missing_device():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py")], capture_output=True, text=True)
    assert result.returncode == 2 and "--device cuda: no CUDA device is visible" in result.stderr


def test_bf16_comparison_reports_speed_and_how_far_bf16_moves_the_step():
    from run import bf16_vs_fp32

    row = bf16_vs_fp32("test", [2, 1], repeats=1)
    assert row["fp32_ms"] > 0 and row["bf16_ms"] > 0 and row["speedup"] > 0
    assert 0 < row["loss_relative_difference"] < 0.05  # bf16 rounds, but the loss stays close
    assert row["gradient_cosine"] > 0.9


def test_end_to_end_summary_leaves_out_warm_up_and_the_batches_after_a_probe():
    from end_to_end import summarise

    from brainfm_lightning.callbacks import StepTiming

    history = [StepTiming(data_wait_ms=10.0 * n, step_ms=100.0, modalities_per_session=[1, 2]) for n in range(8)]
    bare = {2: 50.0, 5: 70.0}  # probes after batches 2 and 5 sit in the waits of batches 3 and 6
    row = summarise(history, bare, warmup=2)
    kept = [2, 4, 5, 7]
    assert row["fit_batches"] == len(kept) and row["bare_steps"] == 2
    assert row["fit_step_ms"] == pytest.approx(sum(10.0 * n + 100.0 for n in kept) / len(kept))
    assert row["bare_step_ms"] == pytest.approx(60.0)
    assert row["ratio"] == pytest.approx(60.0 / row["fit_step_ms"])
    assert row["batch_shapes"] == {"(2, 1)": 8}


def test_end_to_end_benchmark_runs_the_fit_with_interleaved_bare_steps(demo_root, tmp_path):
    out = tmp_path / "e2e.json"
    command = [sys.executable, str(BENCHMARKS / "end_to_end.py"), "--config", "configs/pretrain/quickstart.yaml",
               "--config", "configs/model/test.yaml", "--steps", "9", "--warmup", "1",
               "--variants", "shipped", "no_augmentation", "--out", str(out),
               "--set", f"data.root={demo_root}", "data.n_subjects=6", "data.demo_spacing=4.0", "data.num_workers=0"]
    subprocess.run(command, check=True, cwd=BENCHMARKS.parent, capture_output=True, timeout=300)
    results = json.loads(out.read_text())
    for name in ("shipped", "no_augmentation"):
        row = results["variants"][name]
        assert row["bare_steps"] == 3 and row["fit_batches"] == 6  # batches 1-8, less the two after a probe
        assert row["fit_step_ms"] == pytest.approx(row["data_wait_ms"] + row["compute_ms"])
        assert 0 < row["ratio"] < 10

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

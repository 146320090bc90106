"""Shared fixtures: a tiny SYNTHETIC demo dataset built once per test session."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Six subjects at 4 mm (about 50 x 59 x 48 voxels): enough for 32^3 crops."""
    from brainfm_lightning.data.demo import ensure_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    ensure_demo_dataset(root, n_subjects=6, seed=0, spacing=4.0)
    return root


@pytest.fixture(scope="session")
def demo_manifest(demo_root) -> Path:
    return demo_root / "manifest.csv"


def tiny_fit_args(demo_root: Path, *extra: str) -> list[str]:
    """``brainfm fit`` arguments for the test preset on the tiny demo data."""
    return [
        "fit",
        "--config", str(CONFIGS / "pretrain/quickstart.yaml"),
        "--config", str(CONFIGS / "model/test.yaml"),
        "--data.root", str(demo_root),
        "--data.n_subjects", "6",
        "--data.demo_spacing", "4.0",
        "--data.num_workers", "0",
        *extra,
    ]


def assert_bitwise_equal(a: object, b: object, what: str) -> None:
    """Nested checkpoint entries (dicts, lists, tensors, values) equal bit for bit; the message names the entry."""
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        assert torch.equal(a, b), f"{what}: max |diff| {(a.double() - b.double()).abs().max().item()}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a} != {b}"

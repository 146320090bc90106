"""`brainfm modalities embed` / `similarity` through a bare argparse parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from brainfm_lightning.commands.modalities import format_matrix, register
from brainfm_lightning.modalities.descriptions import DEFAULT_DESCRIPTIONS
from brainfm_lightning.modalities.encoder import DISABLE_ENV_VAR
from brainfm_lightning.modalities.table import ModalityTable


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="brainfm modalities")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tables") / "mods.safetensors"
    assert run(["embed", "--names", "T1w", "t2", "FLAIR", "PD", "--out", str(out)]) == 0
    return out


def test_embed_writes_table_and_summary(table_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = ModalityTable.load(table_file)
    assert table.names == ["T1w", "t2", "FLAIR", "PD"] and table.dim == 384
    assert table.texts[1] == DEFAULT_DESCRIPTIONS["T2w"]
    overrides = tmp_path / "desc.yaml"
    overrides.write_text("PD: proton density weighted brain MRI\n")
    out = tmp_path / "sub" / "custom.safetensors"
    assert run(["embed", "--names", "PD", "SWI", "--out", str(out), "--descriptions", str(overrides)]) == 0
    printed = capsys.readouterr().out
    assert "minilm:sentence-transformers/all-MiniLM-L6-v2" in printed and "dim: 384" in printed
    assert "proton density weighted brain MRI" in printed and str(out) in printed
    assert ModalityTable.load(out).texts == ["proton density weighted brain MRI", DEFAULT_DESCRIPTIONS["SWI"]]


def test_similarity_from_table_with_png(table_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png = tmp_path / "sim.png"
    assert run(["similarity", "--table", str(table_file), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[1], lines[2:6]
    assert header.split() == ["T1w", "t2", "FLAIR", "PD"]
    expected = ModalityTable.load(table_file).cosine_similarity()
    for i, row in enumerate(rows):
        cells = row.split()
        assert cells[0] == ["T1w", "t2", "FLAIR", "PD"][i]
        np.testing.assert_allclose([float(c) for c in cells[1:]], expected[i], atol=0.006)
    assert rows[0].split()[1] == "1.00"


def test_similarity_raw_vs_described(capsys: pytest.CaptureFixture) -> None:
    assert run(["similarity", "--encoder", "minilm", "--names", "PD", "proton density", "--raw"]) == 0
    raw = float(capsys.readouterr().out.splitlines()[2].split()[-1])
    assert run(["similarity", "--names", "PD", "proton density"]) == 0
    described = float(capsys.readouterr().out.splitlines()[2].split()[-1])
    assert raw < 0.6 and described == pytest.approx(1.0)  # aliases resolve to the same description


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["similarity", "--table", "{tmp}/missing.safetensors"], "missing.safetensors"),
        (["similarity", "--encoder", "{tmp}/no-model", "--names", "T1w"], "no-model"),
        (["similarity", "--encoder", "biobert-typo", "--names", "T1w"], "biobert-typo"),
        (["similarity", "--table", "{table}", "--names", "T1w", "DWI"], "'DWI' is not in the table"),
        (["similarity", "--table", "{table}", "--raw"], "--raw"),
        (["similarity"], "--names"),
        (["embed", "--names", "T1w", "--out", "{tmp}/x.npz"], "x.npz"),
        (["embed", "--names", "T1w", "--out", "{tmp}/x.safetensors", "--descriptions", "{tmp}/d.yaml"], "d.yaml"),
        (["embed", "--names", "T1w", "--out", "{tmp}/x.safetensors", "--descriptions", "{tmp}/bad.json"], "bad.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, table_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(["not", "a", "mapping"]))
    argv = [a.format(tmp=tmp_path, table=table_file) for a in argv]
    assert run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and "error:" in err_lines[0] and needle in err_lines[0]
    assert "Traceback" not in captured.err


def test_disabled_encoder_reports_remedy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(DISABLE_ENV_VAR, "1")
    assert run(["embed", "--names", "T1w", "--out", str(tmp_path / "t.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "minilm" in err and "precomputed" in err and not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize("sub", ["embed", "similarity"])
def test_help_is_helpful(sub: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        run([sub, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--names", "--encoder"] + (["--out", "--descriptions"] if sub == "embed" else ["--table", "--png"]):
        assert flag in text
    assert "example" in text


def test_format_matrix_alignment() -> None:
    text = format_matrix(np.array([[1.0, 0.123], [0.123, 1.0]]), ["A", "LongName"])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].split() == ["A", "1.00", "0.12"]

"""Label-efficiency results as people read them: CSV rows, markdown tables of mean ± std, and the curves.

The presentation half of ``make label-efficiency``; :mod:`brainfm_lightning.evaluation.label_efficiency` computes the
rows (:func:`~brainfm_lightning.evaluation.label_efficiency.aggregate`,
:func:`~brainfm_lightning.evaluation.label_efficiency.paired_differences`) that these functions write.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from brainfm_lightning.evaluation.label_efficiency import write_manifest


def write_rows(rows: Sequence[Mapping[str, object]], path: str | Path) -> Path:
    """Write dict rows as CSV (columns of the first row)."""
    return write_manifest([{k: str(v) for k, v in row.items()} for row in rows], path)


def markdown_table(rows: Sequence[Mapping[str, object]], metric: str = "dice", digits: int = 3) -> str:
    """One table per metric: a row per model and condition, a column per labelled-set size, ``mean ± std``."""
    sizes = sorted({int(r["n_labelled"]) for r in rows})  # type: ignore[call-overload]
    keys = list(dict.fromkeys((str(r["model"]), str(r["condition"])) for r in rows))
    cell = {(str(r["model"]), str(r["condition"]), int(r["n_labelled"])): r for r in rows}  # type: ignore[call-overload]
    lines = ["| model | condition | " + " | ".join(f"N={n}" for n in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for model, condition in keys:
        cells = []
        for n in sizes:
            row = cell.get((model, condition, n))
            if row is None:
                cells.append("")
                continue
            mean, std = float(row[f"{metric}_mean"]), float(row[f"{metric}_std"])  # type: ignore[arg-type]
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}")
        lines.append(f"| {model} | {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(rows: Sequence[Mapping[str, object]], digits: int = 3) -> str:
    """:func:`paired_differences` as markdown: a row per model and size."""
    lines = ["| model | N | difference per seed | mean ± std | ahead on | beyond both spreads |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        mean, std = float(row["mean"]), float(row["std"])  # type: ignore[arg-type]
        cell = f"{mean:+.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:+.{digits}f}"
        lines.append(f"| {row['model']} | {row['n_labelled']} | {row['differences']} | {cell} | "
                     f"{row['n_ahead']} of {row['n_seeds']} | {'yes' if row['beyond_spread'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: Sequence[Mapping[str, object]], path: str | Path,
                conditions: Sequence[str] = ("all",), metrics: Sequence[str] = ("dice", "lesion_f1")) -> Path:
    """Mean ± std over seeds against labelled subjects (log2 axis): one panel per metric, a line per model/condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for model in dict.fromkeys(str(r["model"]) for r in rows):
            for condition in conditions:
                line = sorted((r for r in rows if r["model"] == model and r["condition"] == condition),
                              key=lambda r: int(r["n_labelled"]))  # type: ignore[call-overload]
                if not line:
                    continue
                x = np.array([int(r["n_labelled"]) for r in line])  # type: ignore[call-overload]
                mean = np.array([float(r[f"{metric}_mean"]) for r in line])  # type: ignore[arg-type]
                std = np.nan_to_num(np.array([float(r[f"{metric}_std"]) for r in line]))  # type: ignore[arg-type]
                label = model if len(conditions) == 1 else f"{model} ({condition})"
                axis.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("labelled training subjects")
        axis.set_ylabel(f"{metric} (test split, mean ± std over seeds)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

"""Label-efficiency experiments: labelled subsets, modality conditions, and means with their spread over seeds.

The pieces of ``make label-efficiency`` (``scripts/label_efficiency.py``) that decide what a figure means: which
subjects each run trains on, how one evaluation's per-case rows become the ``all`` / ``w/o X`` conditions, and how
runs are averaged (first over the test cases of a run, then over seeds: mean and sample standard deviation).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

CURVE_METRICS = ("dice", "hd95", "lesion_f1")
# Dice over all cases mixes two things: how well lesions are outlined, and whether a lesion-free head is left
# empty (Dice 1 or 0, so 3 lesion-free cases of 12 swing a mean by 0.08 each). These keep them apart:
# ``dice_with_lesion`` is Dice on the cases whose reference has a lesion (NaN on the others),
# ``clean_without_lesion`` is 1 when a lesion-free case gets no lesion voxel, else 0 (NaN on cases with lesions).
# A reference is lesion-free when its ``lesion_tpr`` is NaN (no reference lesion to detect).
SPLIT_METRICS = ("dice_with_lesion", "clean_without_lesion")
REPORT_METRICS = CURVE_METRICS + SPLIT_METRICS
_AGGREGATE_ROWS = ("mean", "std", "n_valid")


def nested_subsets(subjects: Sequence[str], sizes: Sequence[int], seed: int) -> dict[int, list[str]]:
    """Labelled training subjects of each size for one seed; smaller sets are contained in larger ones.

    Subjects are shuffled once per seed (NumPy's ``default_rng(seed)``) and each size takes a prefix, as
    label-efficiency curves are usually drawn: adding labels never removes a subject.

    Raises:
        ValueError: A size is below 1 or above the number of subjects.
    """
    pool = sorted(subjects)
    bad = [n for n in sizes if not 1 <= n <= len(pool)]
    if bad:
        raise ValueError(f"labelled set sizes {bad} must lie in [1, {len(pool)}] (the labelled training pool)")
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    return {n: sorted(order[:n]) for n in sizes}


def split_manifest(rows: Iterable[Mapping[str, str]], splits: Mapping[str, Sequence[str]],
                   rename: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Manifest rows of the subjects in ``splits`` (``train``/``val``/``test`` -> subjects) with a ``split`` column.

    Rows of other subjects are dropped; ``rename`` maps modality names (e.g. a sequence shown under a descriptive
    name). Raises ``ValueError`` when a subject is in two splits.
    """
    owner: dict[str, str] = {}
    for split, subjects in splits.items():
        for subject in subjects:
            if owner.setdefault(subject, split) != split:
                raise ValueError(f"subject {subject} is in both the {owner[subject]} and the {split} split")
    rename = rename or {}
    return [dict(row) | {"split": owner[row["subject"]], "modality": rename.get(row["modality"], row["modality"])}
            for row in rows if row["subject"] in owner]


def write_manifest(rows: Sequence[Mapping[str, str]], path: str | Path) -> Path:
    """Write manifest rows (the columns of the first row) as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def condition_cases(case_rows: Iterable[Mapping[str, str]],
                    metrics: Sequence[str] = CURVE_METRICS) -> dict[str, list[dict[str, float]]]:
    """Group ``robustness_cases.csv`` rows into ``all`` and ``w/o X`` conditions.

    ``all`` holds each case with its full set of sequences; ``w/o X`` each case that has ``X`` and another
    sequence, evaluated without ``X``. A metric missing from a row is NaN; ``SPLIT_METRICS`` are derived from the
    row's ``dice`` and ``lesion_tpr``.

    Returns:
        condition -> one dict of ``metrics`` per case.
    """
    by_case: dict[str, dict[frozenset[str], Mapping[str, str]]] = {}
    for row in case_rows:
        if row["case"] not in _AGGREGATE_ROWS:
            by_case.setdefault(row["case"], {})[frozenset(row["subset"].split("+"))] = row
    grouped: dict[str, list[dict[str, float]]] = {"all": []}
    for subsets in by_case.values():
        full = max(subsets, key=len)
        grouped["all"].append(_scores(subsets[full], metrics))
        for name in sorted(full) if len(full) > 1 else []:
            grouped.setdefault(f"w/o {name}", []).append(_scores(subsets[full - {name}], metrics))
    return grouped


def _scores(row: Mapping[str, str], metrics: Sequence[str]) -> dict[str, float]:
    def read(name: str) -> float:
        return float(row[name]) if row.get(name) not in (None, "") else math.nan

    scores = {}
    for metric in metrics:
        if metric not in SPLIT_METRICS:
            scores[metric] = read(metric)
            continue
        tpr, dice = read("lesion_tpr"), read("dice")
        has_lesion = None if row.get("lesion_tpr") in (None, "") else not math.isnan(tpr)
        wanted = has_lesion is (metric == "dice_with_lesion")  # a None (unknown) reference counts for neither
        scores[metric] = dice if wanted else math.nan
    return scores


def nanmean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _sample_std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def aggregate(runs: Iterable[Mapping[str, object]], metrics: Sequence[str] = CURVE_METRICS) -> list[dict[str, object]]:
    """Mean and spread over seeds of each (model, labelled subjects, condition).

    Args:
        runs: One record per trained model and condition: ``model``, ``n_labelled``, ``seed``, ``condition`` and
            ``cases`` (a list of per-case metric dicts, as :func:`condition_cases` gives).
        metrics: The metrics to average.

    Returns:
        Rows with ``model``, ``n_labelled``, ``condition``, ``n_seeds``, ``n_cases`` (per seed, the most any seed
        had) and for each metric ``<metric>_mean`` (over seeds of the per-seed case means) and ``<metric>_std`` (the
        sample standard deviation over seeds, ddof 1; NaN with one seed). Sorted by model (first appearance),
        labelled subjects, then condition (``all`` first).
    """
    groups: dict[tuple[str, int, str], list[Mapping[str, object]]] = {}
    models: list[str] = []
    for run in runs:
        model = str(run["model"])
        if model not in models:
            models.append(model)
        groups.setdefault((model, int(run["n_labelled"]), str(run["condition"])), []).append(run)
    rows = []
    for (model, n, condition), group in groups.items():
        seeds = [int(r["seed"]) for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{model}, {n} labelled, {condition}: seed listed twice ({sorted(seeds)})")
        row: dict[str, object] = {"model": model, "n_labelled": n, "condition": condition, "n_seeds": len(group),
                                  "n_cases": max(len(r["cases"]) for r in group)}  # type: ignore[arg-type]
        for metric in metrics:
            per_seed = [nanmean(case[metric] for case in r["cases"]) for r in group]  # type: ignore[attr-defined]
            finite = np.array([v for v in per_seed if not math.isnan(v)])
            row[f"{metric}_mean"] = float(finite.mean()) if len(finite) else math.nan
            row[f"{metric}_std"] = _sample_std(finite)
        rows.append(row)
    order = {m: i for i, m in enumerate(models)}
    return sorted(rows, key=lambda r: (order[str(r["model"])], int(r["n_labelled"]),  # type: ignore[call-overload]
                                       r["condition"] != "all", str(r["condition"])))


def paired_differences(runs: Iterable[Mapping[str, object]], reference: str, metric: str = "dice",
                       condition: str = "all") -> list[dict[str, object]]:
    """Each model minus ``reference``, seed by seed: the two trained on the same subjects, so the draw cancels.

    A seed draws the labelled subjects and the initialisation together, and the draw moves a score more than the
    initialisation does; the difference within a seed isolates the model. ``beyond_spread`` is the label-efficiency
    target read literally: the mean difference exceeds both models' sample std over the same seeds.

    Args:
        runs: Records as for :func:`aggregate`.
        reference: The model subtracted (e.g. ``"BrainFM (scratch)"``).
        metric: A per-case metric of the records.
        condition: The modality condition compared.

    Returns:
        Rows with ``model``, ``n_labelled``, ``seeds`` and ``differences`` (space-separated, per seed), ``n_seeds``,
        ``mean`` and ``std`` (ddof 1) of the differences, ``n_ahead`` (seeds where the model scores higher),
        ``model_std`` and ``reference_std`` (each model's spread over the seeds) and ``beyond_spread``. Only seeds
        where both models have a finite score count; sizes where the reference has none are left out.
    """
    per_seed: dict[tuple[str, int], dict[int, float]] = {}
    models: list[str] = []
    for run in runs:
        if run["condition"] != condition:
            continue
        model = str(run["model"])
        if model not in models:
            models.append(model)
        score = nanmean(case[metric] for case in run["cases"])  # type: ignore[attr-defined]
        per_seed.setdefault((model, int(run["n_labelled"])), {})[int(run["seed"])] = score  # type: ignore[call-overload]
    rows = []
    for (model, n), scores in sorted(per_seed.items(), key=lambda item: (models.index(item[0][0]), item[0][1])):
        base = per_seed.get((reference, n))
        if model == reference or base is None:
            continue
        seeds = sorted(s for s in scores if s in base and not math.isnan(scores[s]) and not math.isnan(base[s]))
        if not seeds:
            continue
        ours, theirs = np.array([scores[s] for s in seeds]), np.array([base[s] for s in seeds])
        differences = ours - theirs
        mean, model_std, reference_std = float(differences.mean()), _sample_std(ours), _sample_std(theirs)
        rows.append({"model": model, "reference": reference, "n_labelled": n, "condition": condition,
                     "metric": metric, "seeds": " ".join(map(str, seeds)),
                     "differences": " ".join(f"{d:+.3f}" for d in differences), "n_seeds": len(seeds),
                     "mean": mean, "std": _sample_std(differences), "n_ahead": int((differences > 0).sum()),
                     "model_std": model_std, "reference_std": reference_std,
                     "beyond_spread": len(seeds) > 1 and abs(mean) > max(model_std, reference_std)})
    return rows


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

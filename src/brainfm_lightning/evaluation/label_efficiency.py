"""Label-efficiency experiments: labelled subsets, modality conditions, and means with their spread over seeds.

The pieces of ``make label-efficiency`` (``scripts/label_efficiency.py``) that decide what a figure means: which
subjects each run trains on, how one evaluation's per-case rows become the ``all`` / ``w/o X`` conditions, and how
runs are averaged (first over the test cases of a run, then over seeds: mean and sample standard deviation), and
how two models are compared seed by seed. :mod:`~brainfm_lightning.evaluation.label_efficiency_report` writes
the results as CSV, markdown tables and curves.
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

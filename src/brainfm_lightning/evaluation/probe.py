"""Frozen-feature probes: what a pretrained encoder's pooled tokens say about a session, beside a random encoder's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from brainfm_lightning.models import ModalityMAE

EmbedFn = Callable[[Sequence[Sequence[str]], torch.Tensor], torch.Tensor]


@torch.no_grad()
def pooled_features(net: ModalityMAE, embed: EmbedFn, batches: Iterable[Mapping[str, Any] | None],
                    columns: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each session's :meth:`ModalityMAE.encode_pooled` embedding and its manifest ``columns``.

    Returns:
        ``features`` float64 ``[S, D]`` and ``column -> float64 [S]``.

    Raises:
        ValueError: A session lacks a column or its value is not a number (session named).
    """
    features: list[np.ndarray] = []
    targets: dict[str, list[float]] = {c: [] for c in columns}
    for batch in batches:
        if batch is None:
            continue
        images = batch["images"]
        pooled = net.encode_pooled(images, embed(batch["modalities"], images), batch["present"],
                                   batch.get("head_offset"))
        features.append(pooled.double().cpu().numpy())
        for session, row in zip(batch["session_ids"], batch["targets"], strict=True):
            for column in columns:
                try:
                    targets[column].append(float(row[column]))
                except (KeyError, ValueError):
                    raise ValueError(f"session {session}: manifest column {column!r} is missing or not a number "
                                     f"({row.get(column)!r})") from None
    if not features:
        raise ValueError("no session to embed: the batches were empty")
    return np.concatenate(features), {c: np.asarray(v) for c, v in targets.items()}


def probe_scores(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray,
                 task: str, neighbours: int = 5) -> dict[str, float]:
    """A linear probe and k-nearest-neighbours on standardised features (scikit-learn), scored on ``test``.

    ``classification``: logistic regression (balanced accuracy, ROC AUC) and kNN (balanced accuracy);
    ``regression``: ridge regression with its penalty chosen by leave-one-out (R2, mean absolute error) and kNN (R2).

    Returns:
        ``linear_<score>`` and ``knn_<score>`` values.
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(neighbours, len(train))
    if task == "classification":
        train_y, test_y = train_y.astype(int), test_y.astype(int)
        linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(train, train_y)
        knn = make_pipeline(StandardScaler(), KNeighborsClassifier(k)).fit(train, train_y)
        scores = {"linear_balanced_accuracy": balanced_accuracy_score(test_y, linear.predict(test)),
                  "knn_balanced_accuracy": balanced_accuracy_score(test_y, knn.predict(test))}
        if len(set(test_y.tolist())) == 2:
            scores["linear_auc"] = roc_auc_score(test_y, linear.predict_proba(test)[:, 1])
        return {key: float(value) for key, value in scores.items()}
    if task != "regression":
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13))).fit(train, train_y)
    knn = make_pipeline(StandardScaler(), KNeighborsRegressor(k)).fit(train, train_y)
    return {"linear_r2": float(r2_score(test_y, ridge.predict(test))),
            "linear_mae": float(mean_absolute_error(test_y, ridge.predict(test))),
            "knn_r2": float(r2_score(test_y, knn.predict(test)))}

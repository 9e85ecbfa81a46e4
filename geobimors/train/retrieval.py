"""Class-level retrieval metrics: each class prompt is a query, the images of that class are relevant.

Used by the retrieval-quality benchmark of ``geobimors search`` (and by ``geobimors evaluate``'s
retrieval task). Ranking is by descending score; ties keep the items' original order, so the
figures are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision of one ranked query (the area under its precision-recall curve, step-wise).

    The mean, over the relevant items, of the precision at the rank where each is retrieved;
    the same definition as ``sklearn.metrics.average_precision_score`` when scores have no ties.

    Args:
        scores: (N,) similarity of every item to the query.
        relevant: (N,) boolean relevance of every item.

    Returns:
        AP in 0..1 (NaN when no item is relevant).
    """
    relevant = np.asarray(relevant, dtype=bool)
    n_relevant = int(relevant.sum())
    if n_relevant == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked = relevant[order]
    ranks = np.flatnonzero(ranked) + 1  # 1-based ranks of the relevant items
    precision_at_hits = np.arange(1, n_relevant + 1) / ranks
    return float(precision_at_hits.mean())


def class_retrieval_metrics(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, Any]:
    """Text-to-image retrieval where query ``c`` (a class prompt) should find the images of class ``c``.

    Args:
        scores: (C, N) similarity of every class query to every image.
        targets: (N,) class index of every image.
        class_names: the C class names (report keys).
        ks: cut-offs for recall@K and precision@K.

    Returns:
        ``mAP`` (mean over classes of :func:`average_precision`), ``R@K`` (fraction of queries with
        at least one relevant image in their top K, the usual image-text retrieval recall),
        ``P@K`` (mean fraction of relevant images in the top K), and ``per_class_AP``.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != (len(class_names), len(targets)):
        raise ValueError(f"scores must be (classes, items) = ({len(class_names)}, {len(targets)}), got {scores.shape}")
    per_class: dict[str, float] = {}
    hits: dict[int, list[float]] = {k: [] for k in ks}
    precisions: dict[int, list[float]] = {k: [] for k in ks}
    for c, name in enumerate(class_names):
        relevant = targets == c
        per_class[name] = average_precision(scores[c], relevant)
        ranked = relevant[np.argsort(-scores[c].astype(np.float64), kind="stable")]
        for k in ks:
            top = ranked[:k]
            hits[k].append(float(top.any()))
            precisions[k].append(float(top.mean()) if len(top) else 0.0)
    valid = [v for v in per_class.values() if not np.isnan(v)]
    report: dict[str, Any] = {"mAP": float(np.mean(valid)) if valid else float("nan")}
    report.update({f"R@{k}": float(np.mean(hits[k])) for k in ks})
    report.update({f"P@{k}": float(np.mean(precisions[k])) for k in ks})
    report["per_class_AP"] = per_class
    report["n_queries"] = len(class_names)
    report["n_items"] = len(targets)
    return report

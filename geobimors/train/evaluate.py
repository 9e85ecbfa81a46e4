"""Evaluation: accuracy, per-class accuracy, confusion matrix, base-to-new protocol."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geobimors.heads.base import Head
from geobimors.train.data import LabelledImages, split_base_new


@dataclass
class Evaluation:
    """Accuracy of a head on labelled images.

    Attributes:
        accuracy: top-1 accuracy.
        per_class: accuracy per class name.
        confusion: (C, C) counts, rows = true class, columns = predicted.
        class_names: class names in matrix order.
        n: number of images.
    """

    accuracy: float
    per_class: dict[str, float]
    confusion: np.ndarray
    class_names: list[str]
    n: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "per_class_accuracy": self.per_class,
            "confusion_matrix": {"classes": self.class_names, "counts": self.confusion.tolist()},
            **self.extra,
        }

    def write_confusion_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the confusion matrix as CSV (rows: true class, columns: predicted)."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *self.class_names])
            for name, row in zip(self.class_names, self.confusion.tolist()):
                writer.writerow([name, *row])


CaptionFn = Callable[[np.ndarray], list[str]]


@torch.no_grad()
def predict(head: Head, data: LabelledImages, batch_size: int = 64, captions: CaptionFn | None = None) -> np.ndarray:
    """Predicted class indexes of every image."""
    head.eval()
    out = []
    for start in range(0, len(data), batch_size):
        chips = data.images[start : start + batch_size]
        texts = captions(chips) if captions is not None and head.uses_captions else None
        out.append(head.chip_logits(chips, texts).argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate(head: Head, data: LabelledImages, batch_size: int = 64, captions: CaptionFn | None = None) -> Evaluation:
    """Evaluate a head on images (the head is re-labelled with the data's classes)."""
    if [label.name for label in head.labels] != [label.name for label in data.labels]:
        head.set_labels(data.labels)
    predictions = predict(head, data, batch_size, captions)
    n_classes = len(data.labels)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (data.targets, predictions), 1)
    names = [label.name for label in data.labels]
    totals = confusion.sum(axis=1)
    per_class = {
        name: float(confusion[i, i] / totals[i]) if totals[i] else float("nan") for i, name in enumerate(names)
    }
    accuracy = float(np.trace(confusion) / max(1, confusion.sum()))
    return Evaluation(accuracy, per_class, confusion, names, len(data))


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two accuracies (0 when either is 0)."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def evaluate_base_to_new(
    head: Head, data: LabelledImages, batch_size: int = 64, captions: CaptionFn | None = None
) -> dict[str, Any]:
    """Base-to-new protocol: base classes among base, new among new, and their harmonic mean."""
    base, new = split_base_new(len(data.labels))
    base_eval = evaluate(head, data.subset(base), batch_size, captions)
    new_eval = evaluate(head, data.subset(new), batch_size, captions)
    return {
        "base_classes": [data.labels[i].name for i in base],
        "new_classes": [data.labels[i].name for i in new],
        "base": base_eval.accuracy,
        "new": new_eval.accuracy,
        "harmonic_mean": harmonic_mean(base_eval.accuracy, new_eval.accuracy),
        "base_report": base_eval.to_dict(),
        "new_report": new_eval.to_dict(),
    }

"""A classifier = a CLIP model + a head, loaded once per process and shared by tasks."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from geobimors.heads.base import Head
from geobimors.labels import Label
from geobimors.models.clip import load_model
from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything needed to build a classifier: small, hashable, picklable.

    Tasks carry this spec, never the model; each process builds the model once.

    Attributes:
        model: model name (see :mod:`geobimors.models.clip`).
        labels: the classes.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        templates: prompt templates for zero-shot classification.

    """

    model: str
    labels: tuple[Label, ...]
    device: str = "auto"
    precision: str = "fp32"
    templates: tuple[str, ...] = REMOTE_SENSING_TEMPLATES

    @property
    def class_names(self) -> list[str]:
        """Label names in output order."""
        return [label.name for label in self.labels]


class Classifier:
    """Turns uint8 chips into class probabilities; one forward pass at a time.

    Tasks on several threads share a classifier: chip reads run in parallel,
    while the lock keeps one forward pass at a time (each already uses every core).
    """

    def __init__(self, spec: ClassifierSpec) -> None:
        from geobimors.heads.zero_shot import ZeroShotHead

        self.spec = spec
        self.clip = load_model(spec.model, spec.device, spec.precision)
        self.head: Head = ZeroShotHead(self.clip, spec.labels, spec.templates)
        self._lock = threading.Lock()

    def probabilities(self, chips: np.ndarray) -> torch.Tensor:
        """Class probabilities (N, C) float32 on CPU for (N, H, W, 3) uint8 chips."""
        if len(chips) == 0:
            return torch.zeros((0, len(self.spec.labels)))
        with self._lock, torch.inference_mode():
            images = self.clip.preprocess(chips)
            logits = self.head.logits(images)
            return logits.float().softmax(dim=-1).cpu()


_CLASSIFIERS: dict[ClassifierSpec, Classifier] = {}
_LOCK = threading.Lock()


def get_classifier(spec: ClassifierSpec) -> Classifier:
    """The process-wide classifier for ``spec`` (built on first use)."""
    with _LOCK:
        classifier = _CLASSIFIERS.get(spec)
        if classifier is None:
            classifier = _CLASSIFIERS[spec] = Classifier(spec)
        return classifier

"""A classifier = a CLIP model + a head (+ a captioner), loaded once per process, shared by tasks."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from geobimors.heads.base import Head, works_from_embeddings
from geobimors.labels import Label
from geobimors.models.captions import CaptionerSpec, load_captioner
from geobimors.models.clip import DEFAULT_VIEW_BLEND, load_model
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
        head: path of a trained head checkpoint (``None``: zero-shot).
        captioner: the bundled ``mini`` captioner, captioning each chip from this classifier's own
            image pass (the model must be the bundled one; the head must not read captions).
        tta: test-time augmentation: image features averaged over 1, 2, 4 or 8 turned and
            mirrored views of each chip (:func:`geobimors.models.clip.dihedral_views`).
        views: detail views (1, 5 or 6; :meth:`geobimors.models.clip.ClipModel.embed_chips`): the
            chip's features blended with its sub-views'; only for heads that classify pooled features.
        view_blend: the sub-views' weight.
        literal_labels: read every zero-shot label as written, without anchoring labels the model
            was not trained on to its nearest trained classes (:mod:`geobimors.models.anchors`).
    """

    model: str
    labels: tuple[Label, ...]
    device: str = "auto"
    precision: str = "fp32"
    templates: tuple[str, ...] = REMOTE_SENSING_TEMPLATES
    head: str | None = None
    captioner: CaptionerSpec | None = None
    tta: int = 1
    views: int = 1
    view_blend: float = DEFAULT_VIEW_BLEND
    literal_labels: bool = False

    @property
    def class_names(self) -> list[str]:
        """Label names in output order."""
        return [label.name for label in self.labels]


class Classifier:
    """Turns uint8 chips into class probabilities (and captions); one forward pass at a time.

    Tasks on several threads share a classifier: chip reads run in parallel,
    while the lock keeps one model call at a time (each already uses every core).
    Captions describe the chips exactly as the classifier sees them: the same
    pixels (window, bands, scaling, resampling).
    """

    def __init__(self, spec: ClassifierSpec) -> None:
        from geobimors.heads.checkpoint import load_head
        from geobimors.heads.zero_shot import ZeroShotHead
        from geobimors.models.anchors import DEFAULT_ANCHORS

        self.spec = spec
        clip = load_model(spec.model, spec.device, spec.precision, spec.tta)
        self.clip = clip.with_views(spec.views, spec.view_blend) if spec.views > 1 else clip
        self.head: Head
        if spec.head is None:
            anchors = None if spec.literal_labels else DEFAULT_ANCHORS
            self.head = ZeroShotHead(self.clip, spec.labels, spec.templates, anchors)
        else:
            self.head = load_head(spec.head, self.clip, spec.labels)
        captioner = getattr(self.head, "captioner", None)
        self.captioner_spec: CaptionerSpec | None = None
        if self.head.uses_captions and captioner is not None and not captioner.is_none:
            self.captioner_spec = captioner
        self._lock = threading.Lock()

    @property
    def writes_captions(self) -> bool:
        """True when chips get captions (a head that reads captions, or captions from the same pass)."""
        return self.captioner_spec is not None or self.spec.captioner is not None

    def _caption(self, chips: np.ndarray, given: Sequence[str | None] | None) -> list[str]:
        """Captions of chips: the given ones, the rest generated (loaded on first need, cached on disk)."""
        spec = self.captioner_spec or self.spec.captioner
        assert spec is not None
        captions: list[str | None] = list(given) if given is not None else [None] * len(chips)
        missing = [i for i, c in enumerate(captions) if c is None]
        if missing:
            captioner = load_captioner(spec, self.spec.device, self.spec.precision)
            for i, text in zip(missing, captioner.caption(chips[missing])):
                captions[i] = text
        return [str(c) for c in captions]

    def classify(
        self, chips: np.ndarray, captions: Sequence[str | None] | None = None
    ) -> tuple[torch.Tensor, list[str] | None]:
        """Class probabilities (N, C) on CPU and captions (or ``None``) for (N, H, W, 3) uint8 chips.

        Args:
            chips: the chips, exactly as the classifier sees them.
            captions: captions made earlier (a separate captioning stage); missing
                ones (``None``) are generated here.
        """
        if len(chips) == 0:
            return torch.zeros((0, len(self.spec.labels))), [] if self.writes_captions else None
        if self._shares_pass(captions):
            logits, shared_texts, _ = self._classify_and_caption(chips)
            return logits.float().softmax(dim=-1).cpu(), shared_texts
        with self._lock, torch.no_grad():
            texts = self._caption(chips, captions) if self.writes_captions else None
            logits = self.head.chip_logits(chips, texts)  # plan_map admits detail views only where they apply
            return logits.float().softmax(dim=-1).cpu(), texts

    def _shares_pass(self, captions: Sequence[str | None] | None) -> bool:
        """True when this call captions the chips from the classifier's own image pass."""
        return self.spec.captioner is not None and captions is None and works_from_embeddings(self.head)

    def _classify_and_caption(self, chips: np.ndarray) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Logits, captions and pooled features from one pass of the bundled image tower.

        Only the image pass holds the lock: the caption decoder, mostly small steps, runs while
        another task's batch goes through the tower.
        """
        assert self.spec.captioner is not None
        captioner = load_captioner(self.spec.captioner, self.spec.device, self.spec.precision)
        with self._lock, torch.no_grad():
            pooled, tokens = self.clip.encode_images_with_tokens(self.clip.preprocess(chips))
            logits = self.head.logits_from_embeddings(pooled)
        with torch.no_grad():
            texts = captioner.caption_from_features(chips, pooled, tokens)
        return logits, texts, pooled

    def classify_with_features(
        self, chips: np.ndarray, captions: Sequence[str | None] | None = None
    ) -> tuple[torch.Tensor, list[str] | None, torch.Tensor]:
        """Like :meth:`classify`, plus the pooled image features (N, E) of the same image pass, on CPU."""
        if len(chips) == 0:
            probs, texts = self.classify(chips, captions)
            return probs, texts, torch.zeros((0, 0))
        if self._shares_pass(captions):
            logits, shared_texts, features = self._classify_and_caption(chips)
            return logits.float().softmax(dim=-1).cpu(), shared_texts, features.float().cpu()
        with self._lock, torch.no_grad():
            texts = self._caption(chips, captions) if self.writes_captions else None
            logits, features = self.head.logits_and_features(self.clip.preprocess(chips), texts)
            return logits.float().softmax(dim=-1).cpu(), texts, features.float().cpu()

    def probabilities(self, chips: np.ndarray) -> torch.Tensor:
        """Class probabilities (N, C) float32 on CPU for (N, H, W, 3) uint8 chips."""
        return self.classify(chips)[0]


_CLASSIFIERS: dict[ClassifierSpec, Classifier] = {}
_LOCK = threading.Lock()


def get_classifier(spec: ClassifierSpec) -> Classifier:
    """The process-wide classifier for ``spec`` (built on first use)."""
    with _LOCK:
        classifier = _CLASSIFIERS.get(spec)
        if classifier is None:
            classifier = _CLASSIFIERS[spec] = Classifier(spec)
        return classifier

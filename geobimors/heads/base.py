"""The one interface every head implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from geobimors.labels import Label
from geobimors.models.clip import ClipModel


class Head(torch.nn.Module):
    """Maps preprocessed chips (and, for some heads, captions) to class logits.

    The pipeline never asks which head it has: it calls :meth:`logits` with
    images and, when :attr:`uses_captions`, their captions. Training calls
    :meth:`forward` with caption features computed once per chip.

    Attributes:
        kind: short name of the head type (``zero-shot``, ``coop``, ...).
        uses_captions: whether the head reads captions of the chips.
        clip: the frozen CLIP model (not a submodule: it is never saved or trained).
        labels: the classes, in logit order.
    """

    kind: ClassVar[str] = "head"
    uses_captions: ClassVar[bool] = False

    def __init__(self, clip: ClipModel, labels: Sequence[Label]) -> None:
        super().__init__()
        self.clip = clip
        self.labels = list(labels)

    @property
    def class_names(self) -> list[str]:
        """Label names in logit order."""
        return [label.name for label in self.labels]

    def set_labels(self, labels: Sequence[Label]) -> None:
        """Classify among other classes (new class names generalise for prompt learners)."""
        self.labels = list(labels)

    def encode_captions(self, captions: Sequence[str] | None) -> torch.Tensor | None:
        """Caption features for :meth:`forward` (``None`` for heads without captions)."""
        return None

    def forward(self, images: torch.Tensor, caption_features: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (N, C) float32 for preprocessed images (N, 3, H, W)."""
        raise NotImplementedError

    def logits(self, images: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Class logits (N, C) for preprocessed images and (if used) their captions."""
        with torch.no_grad():
            return self(images, self.encode_captions(captions))

    def chip_logits(self, chips: np.ndarray, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Class logits (N, C) for raw (N, H, W, 3) uint8 chips and (if used) their captions.

        With the model's detail views (:meth:`ClipModel.embed_chips`), from the blended pooled
        features, so only for heads that classify those (:func:`works_from_embeddings`).
        """
        if self.clip.views > 1:
            with torch.no_grad():
                return self.logits_from_embeddings(self.clip.embed_chips(chips), self.encode_captions(captions))
        return self.logits(self.clip.preprocess(chips), captions)

    def logits_from_embeddings(
        self, image_features: torch.Tensor, caption_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class logits (N, C) from pooled, L2-normalised image features (an embeddings store).

        Heads that need only what the store holds (pooled image features, caption
        embeddings) implement this; :func:`works_from_embeddings` tells which do.
        """
        raise NotImplementedError(f"the {self.kind} head cannot classify from stored embeddings")

    def logits_and_features(
        self, images: torch.Tensor, captions: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (N, C) and pooled image features (N, E) from one image pass.

        ``map --embeddings`` stores the features of the very pass that labels the chips.
        """
        caption_features = self.encode_captions(captions)
        with torch.no_grad():
            if works_from_embeddings(self):
                features = self.clip.encode_images(images)
                return self.logits_from_embeddings(features, caption_features), features
        raise NotImplementedError(f"the {self.kind} head does not return its image features")

    def config(self) -> dict[str, Any]:
        """Construction settings saved with the head's weights."""
        return {}

    def trainable_parameter_count(self) -> int:
        """Number of parameters training updates."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def works_from_embeddings(head: Head) -> bool:
    """True when ``head`` classifies from stored pooled embeddings (implements :meth:`Head.logits_from_embeddings`)."""
    return type(head).logits_from_embeddings is not Head.logits_from_embeddings

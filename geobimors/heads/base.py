"""The one interface every head implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

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

    def logits_from_embeddings(
        self, image_features: torch.Tensor, caption_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class logits (N, C) from L2-normalised pooled image features (N, E), without pixels (optional)."""
        raise NotImplementedError(f"the {self.kind} head cannot classify from stored embeddings; it reads pixels")

    def logits(self, images: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Class logits (N, C) for preprocessed images and (if used) their captions."""
        with torch.no_grad():
            return self(images, self.encode_captions(captions))

    def config(self) -> dict[str, Any]:
        """Construction settings saved with the head's weights."""
        return {}

    def trainable_parameter_count(self) -> int:
        """Number of parameters training updates."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

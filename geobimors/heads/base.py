"""The one interface every head implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from geobimors.labels import Label
from geobimors.models.clip import ClipModel


class Head(torch.nn.Module):
    """Maps preprocessed chips (and, for some heads, captions) to class logits.

    The pipeline never asks which head it has: it calls :meth:`logits`.

    Attributes:
        kind: short name of the head type (``zero-shot``, ``coop``, ...).
        uses_captions: whether :meth:`logits` needs captions of the chips.
        clip: the frozen CLIP model.
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

    def logits(self, images: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Class logits (N, C) float32 for preprocessed images (N, 3, H, W)."""
        raise NotImplementedError

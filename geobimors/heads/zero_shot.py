"""Zero-shot CLIP: cosine similarity with prompt-ensembled class text features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geobimors.errors import warn
from geobimors.heads.base import Head
from geobimors.labels import Label
from geobimors.models.clip import ClipModel
from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES, fill_templates


class ZeroShotHead(Head):
    """Classifies by similarity to averaged text features of templated prompts.

    Text features are computed once per label set.
    """

    kind = "zero-shot"
    class_features: torch.Tensor

    def __init__(
        self, clip: ClipModel, labels: Sequence[Label], templates: Sequence[str] = REMOTE_SENSING_TEMPLATES
    ) -> None:
        super().__init__(clip, labels)
        self.templates = tuple(templates)
        self.register_buffer("class_features", self._class_features(), persistent=False)

    def _class_features(self) -> torch.Tensor:
        prompts = [p for label in self.labels for p in fill_templates(label.prompt, self.templates)]
        cut = self.clip.overflowing(prompts)
        for i, label in enumerate(self.labels):
            if any(cut[i * len(self.templates) : (i + 1) * len(self.templates)]):
                warn(
                    f"label {label.name[:40]!r}... is longer than the text encoder's context: only its beginning "
                    "is read; shorten it or use 'label: short description'"
                )
        features = self.clip.encode_texts(prompts).view(len(self.labels), len(self.templates), -1)
        return F.normalize(features.mean(dim=1), dim=-1)

    def set_labels(self, labels: Sequence[Label]) -> None:
        """Classify among other classes."""
        super().set_labels(labels)
        self.class_features = self._class_features()

    def forward(self, images: torch.Tensor, caption_features: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled cosine similarities (N, C) between images and class text features."""
        return self.logits_from_embeddings(self.clip.encode_images(images))

    def logits_from_embeddings(
        self, image_features: torch.Tensor, caption_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled cosine similarities (N, C) of pooled, L2-normalised image features."""
        features = image_features.to(self.class_features.device, torch.float32)
        return self.clip.logit_scale * features @ self.class_features.T

    def config(self) -> dict[str, object]:
        """The prompt templates."""
        return {"templates": list(self.templates)}

"""Zero-shot CLIP: cosine similarity with prompt-ensembled class text features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geobimors.heads.base import Head
from geobimors.labels import Label
from geobimors.models.clip import ClipModel
from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES, fill_templates


class ZeroShotHead(Head):
    """Classifies by similarity to averaged text features of templated prompts.

    Text features are computed once, when the head is built.
    """

    kind = "zero-shot"
    class_features: torch.Tensor

    def __init__(
        self, clip: ClipModel, labels: Sequence[Label], templates: Sequence[str] = REMOTE_SENSING_TEMPLATES
    ) -> None:
        super().__init__(clip, labels)
        self.templates = tuple(templates)
        prompts = [p for label in self.labels for p in fill_templates(label.prompt, self.templates)]
        features = clip.encode_texts(prompts).view(len(self.labels), len(self.templates), -1)
        self.register_buffer("class_features", F.normalize(features.mean(dim=1), dim=-1), persistent=False)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Scaled cosine similarities (N, C) between images and class text features."""
        image_features = self.clip.encode_images(images)
        return self.clip.logit_scale * image_features @ self.class_features.T

"""Zero-shot CLIP: cosine similarity with prompt-ensembled class text features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geobimors.errors import warn
from geobimors.heads.base import Head
from geobimors.labels import Label, short_label
from geobimors.models.anchors import DEFAULT_ANCHORS, AnchorSettings, anchor_class_features, anchor_config
from geobimors.models.clip import ClipModel
from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES, fill_templates


class ZeroShotHead(Head):
    """Classifies by similarity to averaged text features of templated prompts.

    Text features are computed once per label set. With a model that declares the phrasings its
    text side was trained on (the bundled ``mini``), labels outside them are anchored to the
    nearest (:mod:`geobimors.models.anchors`); ``anchors=None`` reads every label as written.

    Attributes:
        anchor_mix: (C,) the share of the anchor in each label's class features (0: as written).
    """

    kind = "zero-shot"
    class_features: torch.Tensor
    anchor_mix: torch.Tensor

    def __init__(
        self,
        clip: ClipModel,
        labels: Sequence[Label],
        templates: Sequence[str] = REMOTE_SENSING_TEMPLATES,
        anchors: AnchorSettings | None = DEFAULT_ANCHORS,
    ) -> None:
        super().__init__(clip, labels)
        self.templates = tuple(templates)
        self.anchors = anchors
        self.register_buffer("class_features", self._class_features(), persistent=False)

    def _class_features(self) -> torch.Tensor:
        prompts = [p for label in self.labels for p in fill_templates(label.prompt, self.templates)]
        cut = self.clip.overflowing(prompts)
        for i, label in enumerate(self.labels):
            if any(cut[i * len(self.templates) : (i + 1) * len(self.templates)]):
                context = int(self.clip.tokenizer([""]).shape[-1])
                warn(
                    f"label {short_label(label.name)!r} is longer than the text encoder's context "
                    f"({context} tokens with the prompt template): only its beginning is read; shorten it or "
                    "use 'label: short description'"
                )
        features = self.clip.encode_texts(prompts).view(len(self.labels), len(self.templates), -1)
        features = F.normalize(features.mean(dim=1), dim=-1)
        self.anchor_mix = torch.zeros(len(self.labels), device=features.device)
        if self.anchors is not None:
            label_prompts = [label.prompt for label in self.labels]
            features, self.anchor_mix = anchor_class_features(
                self.clip, label_prompts, features, self.templates, self.anchors
            )
        return features

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
        """The prompt templates and label anchoring."""
        return {"templates": list(self.templates), "anchors": anchor_config(self.anchors)}

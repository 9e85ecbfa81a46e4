"""Heads fitted on frozen, pooled image embeddings: seconds on a CPU, no backpropagation through CLIP.

* :class:`LinearProbeHead` (``probe``): a linear classifier initialised with the
  zero-shot text classifier (the prompt-ensembled class text embeddings) and
  L2-regularised toward it, in the spirit of LP++ (Huang et al., CVPR 2024) and
  "zero-shot-initialised" linear probes: with few shots it stays close to
  zero-shot, with many it follows the data.
* :class:`TipAdapterHead` (``tip``): Tip-Adapter (Zhang et al., ECCV 2022), a
  training-free key-value cache of the shots' embeddings added to the zero-shot
  logits: ``scale * f T^T + alpha * exp(-beta (1 - f K^T)) V``.

Both classify from L2-normalised pooled image features
(:meth:`logits_from_embeddings`), so they run from an embedding store without
reading pixels. Classes that were not in training fall back to their zero-shot
text classifier (the probe) or get no cache votes (Tip-Adapter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from geobimors.heads.base import Head
from geobimors.labels import Label
from geobimors.models.anchors import DEFAULT_ANCHORS, AnchorSettings, anchor_config
from geobimors.models.clip import ClipModel
from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES


def text_classifier(
    clip: ClipModel, labels: Sequence[Label], templates: Sequence[str], anchors: AnchorSettings | None
) -> torch.Tensor:
    """(C, E) zero-shot class weights: normalised means of the templated prompt embeddings (anchored or not)."""
    from geobimors.heads.zero_shot import ZeroShotHead

    return ZeroShotHead(clip, labels, templates, anchors).class_features.detach().clone()


class EmbeddingHead(Head):
    """A head on pooled image embeddings; :meth:`forward` encodes images, then :meth:`logits_from_embeddings`.

    Args:
        clip: the frozen CLIP model.
        labels: the classes (the training classes when built for training or loading).
        templates: prompt templates of the zero-shot text classifier it starts from.
        anchors: label anchoring of that text classifier (:mod:`geobimors.models.anchors`; ``None``:
            labels read as written, as in checkpoints made before anchoring existed).
    """

    text_weights: torch.Tensor

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
        self.training_labels = list(labels)
        self.register_buffer("text_weights", self._text_classifier(), persistent=False)

    def _text_classifier(self) -> torch.Tensor:
        return text_classifier(self.clip, self.labels, self.templates, self.anchors)

    def set_labels(self, labels: Sequence[Label]) -> None:
        """Classify among other classes: training classes keep what was fitted, new ones use their text."""
        super().set_labels(labels)
        self.text_weights = self._text_classifier()

    def _training_index(self) -> list[int]:
        """For each current label, its index among the training classes (-1: not a training class)."""
        names = [label.name for label in self.training_labels]
        return [names.index(label.name) if label.name in names else -1 for label in self.labels]

    def forward(self, images: torch.Tensor, caption_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, C) of preprocessed images."""
        return self.logits_from_embeddings(self.clip.encode_images(images))

    def config(self) -> dict[str, Any]:
        """Templates and label anchoring of the text classifier."""
        return {"templates": list(self.templates), "anchors": anchor_config(self.anchors)}

    def hyperparameters(self) -> dict[str, float]:
        """The values chosen on held-out data when fitting."""
        return {}


class LinearProbeHead(EmbeddingHead):
    """Linear probe anchored to the zero-shot text classifier.

    ``logits = scale * f W^T + b``; training minimises cross-entropy plus
    ``weight_decay * ||W - T||^2`` (T: text classifier), with the strength chosen
    on validation images or by cross-validation on the shots (see
    :func:`geobimors.train.embedding.fit_embedding_head`).
    """

    kind = "probe"
    weight_decay: float = float("nan")

    def __init__(
        self,
        clip: ClipModel,
        labels: Sequence[Label],
        templates: Sequence[str] = REMOTE_SENSING_TEMPLATES,
        anchors: AnchorSettings | None = DEFAULT_ANCHORS,
    ) -> None:
        super().__init__(clip, labels, templates, anchors)
        self.weight = torch.nn.Parameter(self.text_weights.clone())
        self.bias = torch.nn.Parameter(torch.zeros(len(self.labels), device=clip.device))

    def hyperparameters(self) -> dict[str, float]:
        """The pull toward the text classifier chosen when fitting."""
        return {"weight_decay": self.weight_decay}

    def classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, E) weights and (C,) biases for the current labels (zero-shot text rows for new classes)."""
        if self.labels == self.training_labels:
            return self.weight, self.bias
        index = self._training_index()
        rows = [self.weight[i] if i >= 0 else self.text_weights[c] for c, i in enumerate(index)]
        biases = [self.bias[i] if i >= 0 else self.bias.new_zeros(()) for i in index]
        return torch.stack(rows), torch.stack(biases)

    def logits_from_embeddings(
        self, image_features: torch.Tensor, caption_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (N, C) of L2-normalised pooled image features (N, E)."""
        weight, bias = self.classifier()
        return self.clip.logit_scale * image_features.float() @ weight.T + bias


class TipAdapterHead(EmbeddingHead):
    """Tip-Adapter: zero-shot logits plus a cache of the training shots' embeddings.

    The cache (keys: shot embeddings, values: their one-hot classes) and the two
    hyperparameters ``alpha`` (cache weight) and ``beta`` (sharpness) are buffers
    saved in the checkpoint; nothing is trained by gradient.
    """

    kind = "tip"
    cache_keys: torch.Tensor
    cache_values: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor

    def __init__(
        self,
        clip: ClipModel,
        labels: Sequence[Label],
        templates: Sequence[str] = REMOTE_SENSING_TEMPLATES,
        anchors: AnchorSettings | None = DEFAULT_ANCHORS,
    ) -> None:
        super().__init__(clip, labels, templates, anchors)
        width = self.text_weights.shape[1]
        self.register_buffer("cache_keys", torch.zeros((0, width), device=clip.device))
        self.register_buffer("cache_values", torch.zeros((0, len(self.labels)), device=clip.device))
        self.register_buffer("alpha", torch.tensor(1.0, device=clip.device))
        self.register_buffer("beta", torch.tensor(5.5, device=clip.device))

    def hyperparameters(self) -> dict[str, float]:
        """Cache weight and sharpness."""
        return {"alpha": float(self.alpha), "beta": float(self.beta)}

    def set_cache(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Store the shots: normalised features (N, E) and class indexes (N,) among the training classes."""
        self.cache_keys = F.normalize(features.float(), dim=-1).to(self.clip.device)
        self.cache_values = F.one_hot(targets.long(), len(self.training_labels)).float().to(self.clip.device)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load weights; the cache buffers take the saved size (the number of shots)."""
        for name in ("cache_keys", "cache_values"):
            if name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[name], device=self.clip.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def cache_logits(self, image_features: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
        """(N, C_train) cache votes; ``exclude_self`` drops each key's vote for itself (leave-one-out)."""
        affinity = image_features.float() @ self.cache_keys.T
        votes = torch.exp(-self.beta * (1.0 - affinity))
        if exclude_self:
            votes = votes * (1.0 - torch.eye(len(votes), len(self.cache_keys), device=votes.device))
        return votes @ self.cache_values

    def logits_from_embeddings(
        self, image_features: torch.Tensor, caption_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (N, C) of L2-normalised pooled image features (N, E)."""
        zero_shot = self.clip.logit_scale * image_features.float() @ self.text_weights.T
        cache = self.cache_logits(image_features)
        if self.labels != self.training_labels:
            index = self._training_index()
            cache = torch.stack([cache[:, i] if i >= 0 else cache.new_zeros(len(cache)) for i in index], dim=1)
        return zero_shot + self.alpha * cache

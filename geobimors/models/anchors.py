"""Label anchoring: class names the model was not trained on, leaning on the phrasings it was.

A small model whose text projection was trained on a few hundred class phrasings (the bundled
``mini``: EuroSAT, UC Merced and AID classes) reads those phrasings well and other wording
poorly: "woodland", "built area" or "non-irrigated arable land" land where the projection was
never taught to put them. Its frozen sentence encoder (MiniLM) still knows what such labels
mean. So a label that is not one of the trained phrasings gets its class features blended with
those of the trained concepts nearest to it in the sentence encoder's own space:

    anchor = sum over the ``ANCHOR_TOP`` nearest concepts of softmax(similarity / T) x concept features
    mix    = ANCHOR_STRENGTH x clamp((best similarity - ANCHOR_GATE) / (1 - ANCHOR_GATE), 0, 1)
    class features = normalise((1 - mix) x own features + mix x anchor)

A label that *is* a trained phrasing (similarity 1) keeps its own features, so the figures of
the plain class names do not move; the further a label is from every concept, the less it is
anchored (with the chosen constants the anchor's share is the similarity itself: "woodland"
0.79, "snow and ice" 0.44). The constants were chosen on validation data and paraphrased label sets
(``benchmarks/bench_label_anchors.py``, docs/benchmarks.md). Only models that declare a trained
vocabulary are anchored (``ClipModel.trained_vocabulary``, which bundled models get from
:func:`geobimors.models.bundled.declared_vocabulary`), through the pooled sentence embedding their
text tower projects (geobimors' plain-torch tower or open_clip's, alike).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from geobimors.models.bundled import outside_vocabulary
from geobimors.models.prompts import fill_templates

ANCHOR_STRENGTH = 1.0
"""Largest share of the anchor in a label's class features (with no gate: the share is this times the similarity)."""
ANCHOR_TEMPERATURE = 0.1
"""Softmax temperature over the nearest concepts' similarities."""
ANCHOR_GATE = 0.0
"""Sentence similarity at and below which a label is not anchored at all (0: every label outside the vocabulary is)."""
ANCHOR_TOP = 3
"""How many nearest concepts make the anchor."""
EXACT_PHRASING = 0.999
"""A label this similar to a trained phrasing is that phrasing (MiniLM is uncased): not anchored."""


@dataclass(frozen=True)
class AnchorSettings:
    """The anchoring constants (defaults: the ones chosen on validation data)."""

    strength: float = ANCHOR_STRENGTH
    temperature: float = ANCHOR_TEMPERATURE
    gate: float = ANCHOR_GATE
    top: int = ANCHOR_TOP


DEFAULT_ANCHORS = AnchorSettings()


def anchor_config(settings: AnchorSettings | None) -> dict[str, float] | None:
    """Anchoring settings as a checkpoint records them (``None``: labels read as written)."""
    return None if settings is None else dataclasses.asdict(settings)


def anchors_from_config(config: dict[str, Any]) -> AnchorSettings | None:
    """The anchoring a head checkpoint was made with; none for checkpoints older than anchoring.

    Raises:
        ValueError: for a recorded value that is not a settings mapping.
    """
    recorded = config.get("anchors")
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        raise ValueError(f"anchors should be a mapping, got {recorded!r}")
    return AnchorSettings(**recorded)


@dataclass
class _Vocabulary:
    """A model's trained concepts: the phrasings' sentence embeddings, and class features as needed."""

    concepts: list[list[str]]
    owner: torch.Tensor  # (P,) concept index of each phrasing
    sentences: torch.Tensor  # (P, D) L2-normalised pooled sentence embeddings of the phrasings
    features: dict[tuple[tuple[str, ...], int], torch.Tensor]  # (templates, concept) -> (E,) class features

    def concept_features(self, clip: Any, templates: tuple[str, ...], index: int) -> torch.Tensor:
        """The class features of one concept: the normalised mean over its phrasings and the templates.

        Encoded on first use only (most label sets need a few concepts), one concept per
        :meth:`~geobimors.models.clip.ClipModel.encode_texts` call, so the disk cache serves it
        to any later label set.
        """
        key = (templates, index)
        if key not in self.features:
            prompts = [p for phrasing in self.concepts[index] for p in fill_templates(phrasing, templates)]
            self.features[key] = F.normalize(clip.encode_texts(prompts).mean(0), dim=-1)
        return self.features[key]


def _vocabulary(clip: Any, concepts: list[list[str]]) -> _Vocabulary:
    """The model's vocabulary, built once per model object (again if its declared vocabulary was replaced)."""
    vocabulary: _Vocabulary | None = getattr(clip, "_anchor_vocabulary", None)
    if vocabulary is None or vocabulary.concepts is not concepts:
        phrasings = [p for group in concepts for p in group]
        owner = torch.tensor([i for i, group in enumerate(concepts) for _ in group], device=clip.device)
        vocabulary = _Vocabulary(concepts, owner, sentence_embeddings(clip, phrasings), {})
        clip._anchor_vocabulary = vocabulary
    return vocabulary


def trained_vocabulary(clip: Any) -> list[list[str]] | None:
    """The phrasing groups (one list per trained concept) the model declares (``clip.trained_vocabulary``).

    ``None`` when it declares none, or when its text tower has no pooled sentence embedding to compare in.
    """
    text = getattr(clip.model, "text", None)
    readable = hasattr(text, "pooled") or all(hasattr(text, a) for a in ("transformer", "pooler", "config"))
    groups: list[list[str]] | None = getattr(clip, "trained_vocabulary", None)
    return groups if groups and readable else None


def _pooled(text: Any, tokens: torch.Tensor) -> torch.Tensor:
    """A text tower's pooled output before its projection: geobimors' tower, or open_clip's Hugging Face one."""
    if hasattr(text, "pooled"):
        return text.pooled(tokens)
    mask = (tokens != text.config.pad_token_id).long()
    return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)


@torch.no_grad()
def sentence_embeddings(clip: Any, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised pooled sentence embeddings (before the CLIP projection) of bare texts, float32."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(list(texts[start : start + batch_size])).to(clip.device)
        with clip.autocast():
            pooled = _pooled(clip.model.text, tokens)
        out.append(F.normalize(pooled.float(), dim=-1))
    return torch.cat(out)


def anchor_class_features(
    clip: Any,
    prompts: Sequence[str],
    features: torch.Tensor,
    templates: Sequence[str],
    settings: AnchorSettings | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class features of ``prompts`` anchored to the model's trained concepts (module docstring).

    Args:
        clip: a :class:`~geobimors.models.clip.ClipModel`.
        prompts: the class descriptions (``Label.prompt``), bare (no template).
        features: (C, E) L2-normalised class features of ``prompts`` (mean over ``templates``).
        templates: the prompt templates ``features`` were made with.
        settings: the constants (default: :class:`AnchorSettings`).

    Returns:
        The (C, E) class features and the (C,) share of the anchor in each; for a model without
        a declared vocabulary, ``features`` unchanged and zeros.
    """
    mix = torch.zeros(len(prompts), device=features.device)
    concepts = trained_vocabulary(clip)
    if not concepts or not outside_vocabulary(concepts, prompts):  # no vocabulary, or only trained phrasings
        return features, mix
    settings = settings or AnchorSettings()
    vocabulary = _vocabulary(clip, concepts)
    similarity = sentence_embeddings(clip, prompts) @ vocabulary.sentences.T  # (C, P)
    per_concept = torch.full((len(prompts), len(concepts)), -1.0, device=similarity.device)
    per_concept = per_concept.scatter_reduce(
        1, vocabulary.owner.expand(len(prompts), -1), similarity, reduce="amax", include_self=True
    )
    nearest = per_concept.topk(min(settings.top, len(concepts)), dim=1)
    best = nearest.values[:, 0]
    mix = settings.strength * ((best - settings.gate) / (1.0 - settings.gate)).clamp(0.0, 1.0)
    mix = torch.where(best >= EXACT_PHRASING, torch.zeros_like(mix), mix).to(features.device)
    weights = torch.softmax(nearest.values / settings.temperature, dim=1).to(features.device)
    out = features.clone()
    templates = tuple(templates)
    for c in torch.nonzero(mix).flatten().tolist():
        near = [vocabulary.concept_features(clip, templates, int(k)) for k in nearest.indices[c].tolist()]
        anchor = (weights[c, :, None] * torch.stack(near).to(features.device)).sum(0)
        out[c] = F.normalize((1.0 - mix[c]) * features[c] + mix[c] * anchor, dim=-1)
    return out, mix

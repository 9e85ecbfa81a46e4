"""Shared machinery of the prompt learners (CoOp, CoCoOp, BiMoRS): learnable context vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from geobimors.errors import ModelError
from geobimors.heads.base import Head
from geobimors.labels import Label
from geobimors.models.clip import ClipModel
from geobimors.models.text import ClassPrompts, PromptTextEncoder

DEFAULT_CONTEXT_INIT = "a photo of a"


class PromptHead(Head):
    """A head whose class prompts start with ``n_ctx`` learned context vectors.

    Args:
        clip: the frozen CLIP model.
        labels: the classes.
        n_ctx: number of context vectors.
        ctx_init: words whose token embeddings initialise the context (their
            token count must equal ``n_ctx``); empty for random initialisation.
    """

    def __init__(
        self, clip: ClipModel, labels: Sequence[Label], n_ctx: int = 4, ctx_init: str = DEFAULT_CONTEXT_INIT
    ) -> None:
        super().__init__(clip, labels)
        self.text_encoder = PromptTextEncoder(clip)
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        if ctx_init:
            init = self.text_encoder.word_embeddings(ctx_init)
            if init.shape[0] != n_ctx:
                raise ModelError(f"context init {ctx_init!r} is {init.shape[0]} tokens, not n_ctx={n_ctx}")
        else:
            generator = torch.Generator().manual_seed(0)
            init = torch.randn(n_ctx, self.text_encoder.width, generator=generator) * 0.02
        self.ctx = torch.nn.Parameter(init.float().clone().to(clip.device))
        self._prompts = self.text_encoder.class_prompts([label.prompt for label in self.labels], n_ctx)
        self._text_cache: torch.Tensor | None = None

    @property
    def ctx_dim(self) -> int:
        """Width of the context vectors (the text tower's token embedding width)."""
        return self.text_encoder.width

    @property
    def prompts(self) -> ClassPrompts:
        """The tokenised class prompts."""
        return self._prompts

    def set_labels(self, labels: Sequence[Label]) -> None:
        """Classify among other classes: the learned context goes with any class names."""
        super().set_labels(labels)
        self._prompts = self.text_encoder.class_prompts([label.prompt for label in self.labels], self.n_ctx)
        self._text_cache = None

    def train(self, mode: bool = True) -> PromptHead:
        """Switch mode; cached class text features are dropped (the context may change)."""
        self._text_cache = None
        return super().train(mode)

    def shared_text_features(self) -> torch.Tensor:
        """(C, E) normalised class features with the shared context (cached outside training)."""
        if self.training or torch.is_grad_enabled():
            return self.text_encoder.encode_prompts(self._prompts, self.ctx)
        if self._text_cache is None:
            self._text_cache = self.text_encoder.encode_prompts(self._prompts, self.ctx)
        return self._text_cache

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load weights (drops cached text features)."""
        self._text_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def config(self) -> dict[str, Any]:
        """Context settings."""
        return {"n_ctx": self.n_ctx, "ctx_init": self.ctx_init}

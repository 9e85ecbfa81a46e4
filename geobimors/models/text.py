"""Class prompts with learnable context through a frozen CLIP text tower.

Prompt learners (CoOp, CoCoOp, BiMoRS) replace the token embeddings of a few
placeholder words in ``"X X X X {class}."`` with learned context vectors and run
the result through the frozen text encoder. :class:`PromptTextEncoder` does that
for both kinds of text towers open_clip builds:

* the CLIP text transformer (causal mask, pooled at the end-of-text token);
* Hugging Face encoders such as BERT/MiniLM (padding mask, mean/CLS pooler).

All ``B x C`` prompts of a batch go through one call, truncated to the longest
prompt in it. Under CLIP's causal mask a token never sees later positions, and
under a padding mask padded positions are ignored, so truncation is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from geobimors.errors import ModelError
from geobimors.models.clip import ClipModel

PLACEHOLDER = "X"


@dataclass
class ClassPrompts:
    """Tokenised ``"X X X X {class}."`` prompts.

    Attributes:
        tokens: (C, L) token ids at the tokenizer's full context length.
        embeddings: (C, L, D) frozen token embeddings; the context slots get replaced.
        context_start: index of the first placeholder token.
        n_ctx: number of placeholder (context) tokens.
        lengths: (C,) number of positions each prompt needs (through its end token).
    """

    tokens: torch.Tensor
    embeddings: torch.Tensor
    context_start: int
    n_ctx: int
    lengths: torch.Tensor

    @property
    def max_length(self) -> int:
        """Positions needed by the longest prompt: the truncation length."""
        return int(self.lengths.max())


class PromptTextEncoder:
    """Encodes class prompts whose context slots hold arbitrary embeddings.

    Args:
        clip: the frozen CLIP model.

    Raises:
        ModelError: for text towers that prompt learning does not support.
    """

    def __init__(self, clip: ClipModel) -> None:
        self.clip = clip
        model = clip.model
        text: Any = getattr(model, "text", None)
        self.is_hf = text is not None and hasattr(text, "transformer") and hasattr(text, "config")
        if self.is_hf:
            self._tower: Any = text
            self.width = int(text.transformer.get_input_embeddings().weight.shape[1])
            self.pad_id = int(text.config.pad_token_id or 0)
        else:
            tower = text if text is not None else model
            pool = getattr(tower, "pool_type", getattr(tower, "text_pool_type", "argmax"))
            if pool != "argmax" or getattr(tower, "cls_emb", None) is not None:
                raise ModelError(
                    f"model {clip.name!r}: prompt learning needs a CLIP text tower pooled at the end-of-text token "
                    f"(this one pools with {pool!r}); use a CLIP/open_clip model such as ViT-B-16:openai"
                )
            self._tower = tower
            self.width = int(tower.token_embedding.weight.shape[1])

    @property
    def device(self) -> torch.device:
        """Device of the text tower."""
        return self.clip.device

    def _tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clip.tokenizer(list(texts)).to(self.device)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen input embeddings (N, L, D) of token ids."""
        with torch.no_grad():
            if self.is_hf:
                return self._tower.transformer.get_input_embeddings()(tokens).float()
            return self._tower.token_embedding(tokens).float()

    def _lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.is_hf:
            return (tokens != self.pad_id).sum(dim=1)
        return tokens.argmax(dim=1) + 1  # the end-of-text token has the highest id

    def word_embeddings(self, text: str) -> torch.Tensor:
        """Embeddings (n, D) of the words of ``text`` without start/end tokens (context init)."""
        tokens = self._tokenize([text])[0]
        n = int(self._lengths(tokens[None])[0]) - 2
        return self.token_embeddings(tokens[None])[0, 1 : 1 + n].clone()

    def class_prompts(self, class_texts: Sequence[str], n_ctx: int) -> ClassPrompts:
        """Tokenise ``n_ctx`` placeholders followed by each class text and a full stop."""
        prefix = " ".join([PLACEHOLDER] * n_ctx)
        tokens = self._tokenize([f"{prefix} {text}." for text in class_texts])
        placeholder = self._tokenize([PLACEHOLDER])[0, 1]
        if not bool((tokens[:, 1 : 1 + n_ctx] == placeholder).all()):
            raise ModelError(f"model {self.clip.name!r}: its tokenizer splits the prompt placeholder; unsupported")
        lengths = self._lengths(tokens)
        if int(lengths.max()) >= tokens.shape[1] and not self.is_hf:
            # The tokenizer cut the end-of-text token off: the class text is longer than the context.
            too_long = [t for t, n in zip(class_texts, lengths.tolist()) if n >= tokens.shape[1]]
            raise ModelError(
                f"label {too_long[0][:60]!r} is too long for the text encoder's {tokens.shape[1]}-token context "
                "with the learned context; shorten it"
            )
        return ClassPrompts(tokens, self.token_embeddings(tokens), 1, n_ctx, lengths)

    def assemble(self, prompts: ClassPrompts, context: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings with context vectors in the placeholder slots.

        Args:
            prompts: the class prompts (C classes).
            context: (n_ctx, D) shared context, or (B, n_ctx, D) per-image context.

        Returns:
            (C, L, D) or (B * C, L, D) embeddings, image-major.
        """
        base = prompts.embeddings
        start, end = prompts.context_start, prompts.context_start + prompts.n_ctx
        if context.dim() == 2:
            return torch.cat([base[:, :start], context.expand(base.shape[0], -1, -1), base[:, end:]], dim=1)
        b, c = context.shape[0], base.shape[0]
        ctx = context[:, None].expand(b, c, -1, -1)
        full = base[None].expand(b, -1, -1, -1)
        out = torch.cat([full[:, :, :start], ctx, full[:, :, end:]], dim=2)
        return out.reshape(b * c, *base.shape[1:])

    def encode(self, embeddings: torch.Tensor, tokens: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Text features (M, E), not normalised, of prompt embeddings.

        Args:
            embeddings: (M, L, D) prompt embeddings.
            tokens: (M, L) their token ids (for end positions and padding).
            truncate: cut every prompt to the longest one in the batch (exact;
                ``False`` runs the full context length, for checks).
        """
        length = int(self._lengths(tokens).max()) if truncate else tokens.shape[1]
        x, tokens = embeddings[:, :length], tokens[:, :length]
        if self.is_hf:
            tower = self._tower
            padding = (tokens != self.pad_id).long()
            out = tower.transformer(inputs_embeds=x.to(tower.transformer.dtype), attention_mask=padding)
            return tower.proj(tower.pooler(out, padding))
        tower = self._tower
        cast = tower.transformer.get_cast_dtype()
        x = x.to(cast) + tower.positional_embedding[:length].to(cast)
        causal = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
        x = tower.ln_final(tower.transformer(x, attn_mask=causal))
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        projection: Any = tower.text_projection
        if projection is None:
            return pooled
        return projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection

    def encode_prompts(self, prompts: ClassPrompts, context: torch.Tensor) -> torch.Tensor:
        """L2-normalised features of class prompts with the given context.

        Returns:
            (C, E) for shared context, (B, C, E) for per-image context.
        """
        embeddings = self.assemble(prompts, context)
        repeats = embeddings.shape[0] // prompts.tokens.shape[0]
        tokens = prompts.tokens.repeat(repeats, 1)
        features = F.normalize(self.encode(embeddings, tokens).float(), dim=-1)
        if context.dim() == 2:
            return features
        return features.view(context.shape[0], prompts.tokens.shape[0], -1)

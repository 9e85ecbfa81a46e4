"""BiMoRS (ICASSP 2026): bi-modal textual prompt learning for VLMs in remote sensing.

Per image, a frozen captioner describes the chip and a frozen BERT-style encoder
embeds the caption. Two keys are made per image:

* a visual key: a meta-net (W -> W/16 -> D, ReLU) applied to every visual token
  of the frozen CLIP image tower, averaged over tokens;
* a caption key: the caption embedding projected to D (trained and saved with
  the head; the official code leaves this projection at its random init).

The ``n_ctx`` learned context vectors attend to [visual key, caption key] with
pre-norm multi-head cross-attention (4 heads); the residual sum is the
image-specific context of the prompts ``[SOS][context][class name .][EOS]``,
which go through the frozen CLIP text encoder, all B x C in one call.
Every width is read from the loaded models (W: visual token width, D: text
token width, Dc: caption embedding width).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from geobimors.heads.prompt import DEFAULT_CONTEXT_INIT, PromptHead
from geobimors.labels import Label
from geobimors.models.caption_encoder import OFFLINE_DEFAULT, CaptionEncoder, load_caption_encoder
from geobimors.models.captions import CaptionerSpec
from geobimors.models.clip import ClipModel

ATTENTION_HEADS = 4


class BiMoRSHead(PromptHead):
    """Context vectors conditioned on visual tokens and the chip's caption.

    Args:
        clip: the frozen CLIP model.
        labels: the classes.
        n_ctx: number of context vectors (paper: 4).
        ctx_init: words initialising the context (paper: "a photo of a").
        captioner: the captioner spec (``none``: a learned empty-caption embedding).
        caption_encoder: caption encoder name (ignored with captioner ``none``).
    """

    kind = "bimors"
    uses_captions = True

    def __init__(
        self,
        clip: ClipModel,
        labels: Sequence[Label],
        n_ctx: int = 4,
        ctx_init: str = DEFAULT_CONTEXT_INIT,
        captioner: CaptionerSpec | None = None,
        caption_encoder: str = OFFLINE_DEFAULT,
    ) -> None:
        super().__init__(clip, labels, n_ctx, ctx_init)
        self.captioner = captioner or CaptionerSpec()
        dim = self.ctx_dim
        probe = torch.zeros((1, 3, *clip.image_size), device=clip.device)
        visual_width = int(clip.encode_images_with_tokens(probe)[1].shape[-1])
        hidden = max(1, visual_width // 16)
        self.meta_net = nn.Sequential(nn.Linear(visual_width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.encoder: CaptionEncoder | None = None
        if self.captioner.is_none:
            self.caption_encoder_name = None
            caption_dim = dim
            self.empty_caption = nn.Parameter(torch.zeros(caption_dim))
        else:
            self.caption_encoder_name = caption_encoder
            self.encoder = load_caption_encoder(caption_encoder, clip.device)
            caption_dim = self.encoder.dim
        self.caption_dim = caption_dim
        self.visual_width = visual_width
        self.caption_proj = nn.Linear(caption_dim, dim)
        self.norm_query = nn.LayerNorm(dim)
        self.norm_keys = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, ATTENTION_HEADS, batch_first=True)
        self.to(clip.device)

    def encode_captions(self, captions: Sequence[str] | None) -> torch.Tensor | None:
        """Caption embeddings (N, Dc), or ``None`` with captioner ``none``."""
        if self.encoder is None or captions is None:
            return None
        return self.encoder.encode(captions)

    def context(self, tokens: torch.Tensor, caption_features: torch.Tensor | None) -> torch.Tensor:
        """Image-specific context (B, n_ctx, D) from visual tokens and caption features."""
        batch = tokens.shape[0]
        visual_key = self.meta_net(tokens).mean(dim=1)  # (B, D)
        if caption_features is None:
            if self.encoder is not None:
                raise ValueError("this BiMoRS head needs captions of the chips")
            caption_features = self.empty_caption.expand(batch, -1)
        caption_key = self.caption_proj(caption_features.float())  # (B, D)
        keys = self.norm_keys(torch.stack([visual_key, caption_key], dim=1))  # (B, 2, D)
        queries = self.ctx[None].expand(batch, -1, -1)
        attended, _ = self.attention(self.norm_query(queries), keys, keys, need_weights=False)
        return queries + attended

    def forward(self, images: torch.Tensor, caption_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, C)."""
        return self._logits(*self.clip.encode_images_with_tokens(images), caption_features)

    def _logits(
        self, image_features: torch.Tensor, tokens: torch.Tensor, caption_features: torch.Tensor | None
    ) -> torch.Tensor:
        context = self.context(tokens, caption_features)
        text = self.text_encoder.encode_prompts(self.prompts, context)  # (B, C, E)
        return self.clip.logit_scale * torch.einsum("be,bce->bc", image_features, text)

    def logits_and_features(
        self, images: torch.Tensor, captions: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled image features from one image pass (the visual tokens are not kept)."""
        caption_features = self.encode_captions(captions)
        with torch.no_grad():
            image_features, tokens = self.clip.encode_images_with_tokens(images)
            return self._logits(image_features, tokens, caption_features), image_features

    @staticmethod
    def parameter_formula(n_ctx: int, ctx_dim: int, visual_width: int, caption_dim: int, empty: bool) -> int:
        """Learnable parameter count of BiMoRS.

        context + meta-net + caption projection + two LayerNorms + attention
        (+ the empty-caption embedding with captioner ``none``).
        """
        d, hidden = ctx_dim, max(1, visual_width // 16)
        meta = visual_width * hidden + hidden + hidden * d + d
        caption = caption_dim * d + d
        norms = 2 * 2 * d
        attention = 3 * d * d + 3 * d + d * d + d
        return n_ctx * d + meta + caption + norms + attention + (caption_dim if empty else 0)

    def config(self) -> dict[str, Any]:
        """Context, captioner and caption-encoder settings."""
        return {
            **super().config(),
            "captioner": asdict(self.captioner),
            "caption_encoder": self.caption_encoder_name,
            "caption_dim": self.caption_dim,
            "visual_width": self.visual_width,
            "attention_heads": ATTENTION_HEADS,
        }

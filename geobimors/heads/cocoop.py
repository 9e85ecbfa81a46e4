"""CoCoOp (Zhou et al., 2022): context shifted per image by a meta-net on the image feature."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geobimors.heads.prompt import DEFAULT_CONTEXT_INIT, PromptHead
from geobimors.labels import Label
from geobimors.models.clip import ClipModel


class CoCoOpHead(PromptHead):
    """Context + meta-net(image feature) per image; B x C prompts per batch.

    Meta-net: E -> E/16 -> D with ReLU (E: image embedding width, D: text token width).
    """

    kind = "cocoop"

    def __init__(
        self, clip: ClipModel, labels: Sequence[Label], n_ctx: int = 4, ctx_init: str = DEFAULT_CONTEXT_INIT
    ) -> None:
        super().__init__(clip, labels, n_ctx, ctx_init)
        embed_dim = int(clip.encode_texts(["a"]).shape[-1])
        hidden = max(1, embed_dim // 16)
        self.meta_net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.ctx_dim)
        ).to(clip.device)

    def forward(self, images: torch.Tensor, caption_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, C)."""
        return self.logits_from_embeddings(self.clip.encode_images(images))

    def logits_from_embeddings(
        self, image_features: torch.Tensor, caption_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (N, C) of pooled, L2-normalised image features (the meta-net reads only those)."""
        image_features = image_features.to(self.ctx.device, torch.float32)
        context = self.ctx[None] + self.meta_net(image_features)[:, None]  # (B, n_ctx, D)
        text = self.text_encoder.encode_prompts(self.prompts, context)  # (B, C, E)
        return self.clip.logit_scale * torch.einsum("be,bce->bc", image_features, text)

    @staticmethod
    def parameter_formula(n_ctx: int, ctx_dim: int, embed_dim: int) -> int:
        """Learnable parameter count: context + two-layer meta-net."""
        hidden = max(1, embed_dim // 16)
        return n_ctx * ctx_dim + (embed_dim * hidden + hidden) + (hidden * ctx_dim + ctx_dim)

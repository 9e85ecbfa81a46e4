"""CoOp (Zhou et al., 2022): one learned context shared by every class prompt and image."""

from __future__ import annotations

import torch

from geobimors.heads.prompt import PromptHead


class CoOpHead(PromptHead):
    """Learned shared context; logits are scaled cosines with the class prompt features.

    Learnable parameters: ``n_ctx * D`` (D: text token width).
    """

    kind = "coop"

    def forward(self, images: torch.Tensor, caption_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, C)."""
        return self.logits_from_embeddings(self.clip.encode_images(images))

    def logits_from_embeddings(
        self, image_features: torch.Tensor, caption_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (N, C) of pooled, L2-normalised image features."""
        text = self.shared_text_features()
        return self.clip.logit_scale * image_features.to(text.device, torch.float32) @ text.T

    @staticmethod
    def parameter_formula(n_ctx: int, ctx_dim: int) -> int:
        """Learnable parameter count: the context vectors."""
        return n_ctx * ctx_dim

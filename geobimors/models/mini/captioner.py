"""geobimors-mini captioner: a small caption decoder on the bundled image tower, offline.

BiMoRS shapes its prompts with a caption of each chip, and the hub captioners
(BLIP, BLIP-2) cannot be downloaded everywhere. This captioner needs nothing but
the package: the bundled ``mini`` image tower encodes a chip into its pooled
embedding and its visual tokens (the last feature map's positions), and a
two-layer transformer decoder over a word vocabulary writes the caption with
beam search. It was trained on the UCM-Captions train split (model selection on
val; test kept for reporting): ``training/train_mini_captioner.py``.

The weights file holds the decoder, its config and vocabulary (in the
safetensors header) and the fingerprint of the image tower it was trained on;
it refuses to run on other image weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geobimors.errors import ModelError

WEIGHTS_PATH = Path(__file__).resolve().parent / "captioner.safetensors"
#: Special tokens at the start of every vocabulary.
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_WORD_RE = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case words of a caption (punctuation dropped), as vocabularies and metrics see it."""
    return _WORD_RE.findall(text.lower())


def detokenize(words: Sequence[str]) -> str:
    """A readable sentence from words."""
    if not words:
        return ""
    sentence = " ".join(words)
    return sentence[0].upper() + sentence[1:] + "."


class CaptionDecoder(nn.Module):
    """A transformer decoder that writes a caption from image memory tokens.

    The memory is the pooled image embedding and each visual token, projected to
    the decoder width, so that words can attend to parts of the chip.

    Args:
        vocab_size: words including :data:`SPECIALS`.
        token_dim: width of the visual tokens.
        pooled_dim: width of the pooled image embedding.
        width: decoder width.
        layers: decoder layers.
        heads: attention heads.
        max_length: longest caption in words (+1 for the end token).
        dropout: dropout inside the decoder.
    """

    def __init__(
        self,
        vocab_size: int,
        token_dim: int,
        pooled_dim: int,
        width: int = 256,
        layers: int = 2,
        heads: int = 4,
        max_length: int = 24,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.config = {
            "vocab_size": vocab_size,
            "token_dim": token_dim,
            "pooled_dim": pooled_dim,
            "width": width,
            "layers": layers,
            "heads": heads,
            "max_length": max_length,
            "dropout": dropout,
        }
        self.max_length = max_length
        self.token_proj = nn.Linear(token_dim, width)
        self.pooled_proj = nn.Linear(pooled_dim, width)
        self.memory_norm = nn.LayerNorm(width)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=width**-0.5)  # scaled by sqrt(width) on input; tied to the output
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.position = nn.Parameter(torch.randn(max_length + 1, width) * 0.02)
        layer = nn.TransformerDecoderLayer(
            width, heads, 4 * width, dropout=dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab_size, bias=False)
        self.out.weight = self.embed.weight  # tied input and output word embeddings

    def memory(self, pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(N, 1 + T, width) memory from pooled (N, pooled_dim) and tokens (N, T, token_dim)."""
        parts = torch.cat([self.pooled_proj(pooled).unsqueeze(1), self.token_proj(tokens)], dim=1)
        return self.memory_norm(parts)

    def forward(self, memory: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Next-word logits (N, L, V) for word ids (N, L) that start with :data:`BOS`."""
        length = words.shape[1]
        x = self.embed(words) * math.sqrt(self.embed.embedding_dim) + self.position[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=words.device).triu(1)  # True: masked
        hidden = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=words == PAD)
        return self.out(self.norm(hidden))

    def cross_keys(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention keys and values of ``memory`` (N, M, width), per head.

        They depend on the image alone, so a caption computes them once, not once per word.
        """
        out = []
        layers: Any = self.decoder.layers
        for layer in layers:
            attention = layer.multihead_attn
            width, heads = attention.embed_dim, attention.num_heads
            weight, bias = attention.in_proj_weight, attention.in_proj_bias
            keys = F.linear(memory, weight[width : 2 * width], bias[width : 2 * width])
            values = F.linear(memory, weight[2 * width :], bias[2 * width :])
            out.append((_split_heads(keys, heads), _split_heads(values, heads)))
        return out

    def next_word_logits(
        self,
        memory: torch.Tensor,
        words: torch.Tensor,
        cache: list[torch.Tensor] | None,
        cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (N, V) of the word after ``words`` (N, L), computing only the last position.

        The same numbers as ``self(memory, words)[:, -1]`` (pre-norm layers under a causal mask: an
        earlier position's keys and values never change). Each layer's self-attention keys and
        values of the earlier words are kept in ``cache``, and the image's cross-attention keys and
        values in ``cross``: a step projects one word, not the whole prefix and the image again.

        Args:
            memory: (N, M, width) image memories.
            words: (N, L) word ids so far, starting with :data:`BOS`.
            cache: what the previous call returned (``None`` for the first word).
            cross: :meth:`cross_keys` of ``memory`` (computed here when ``None``).

        Returns:
            The logits and the cache for the next call (reorder its rows with the beams).
        """
        position = words.shape[1] - 1
        x = self.embed(words[:, -1:]) * math.sqrt(self.embed.embedding_dim) + self.position[position : position + 1]
        cross = self.cross_keys(memory) if cross is None else cross
        layers: Any = self.decoder.layers
        new_cache: list[torch.Tensor] = []
        for i, layer in enumerate(layers):
            attention = layer.self_attn
            width, heads = attention.embed_dim, attention.num_heads
            projected = F.linear(layer.norm1(x), attention.in_proj_weight, attention.in_proj_bias)
            query, keys, values = projected.chunk(3, dim=-1)
            keys, values = _split_heads(keys, heads), _split_heads(values, heads)
            if cache is not None:
                keys, values = torch.cat([cache[2 * i], keys], dim=2), torch.cat([cache[2 * i + 1], values], dim=2)
            new_cache += [keys, values]
            mixed = F.scaled_dot_product_attention(_split_heads(query, heads), keys, values)
            x = x + attention.out_proj(_merge_heads(mixed))
            attention = layer.multihead_attn
            query = F.linear(layer.norm2(x), attention.in_proj_weight[:width], attention.in_proj_bias[:width])
            mixed = F.scaled_dot_product_attention(_split_heads(query, heads), *cross[i])
            x = x + attention.out_proj(_merge_heads(mixed))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return self.out(self.norm(x))[:, -1], new_cache

    @torch.no_grad()
    def generate(
        self, memory: torch.Tensor, beams: int = 3, length_penalty: float = 0.0, cache: bool = True
    ) -> list[list[int]]:
        """Word ids of the best caption of each memory, by batched beam search.

        Args:
            memory: (N, M, width) image memories.
            beams: beam width (1: greedy).
            length_penalty: alpha of the score normalisation ``logp / length**alpha``.
            cache: compute each step's last position only (:meth:`next_word_logits`); ``False``
                re-runs :meth:`forward` over the whole prefix at every step (same captions, slower).
        """
        n = memory.shape[0]
        if n == 0:
            return []
        incremental = cache and not self.training  # dropout is not part of the incremental path
        state: list[torch.Tensor] | None = None
        memory = memory.repeat_interleave(beams, dim=0)
        cross = self.cross_keys(memory) if incremental else None
        words = torch.full((n * beams, 1), BOS, dtype=torch.long, device=memory.device)
        scores = torch.zeros(n, beams, device=memory.device)
        scores[:, 1:] = -math.inf  # all beams start identical: expand only the first
        finished = torch.zeros(n * beams, dtype=torch.bool, device=memory.device)
        lengths = torch.zeros(n * beams, device=memory.device)
        rows = torch.arange(n, device=memory.device)[:, None]
        for _ in range(self.max_length):
            if incremental:
                logits, state = self.next_word_logits(memory, words, state, cross)
            else:
                logits = self(memory, words)[:, -1]
            logp = logits.float().log_softmax(dim=-1)
            logp[:, PAD] = -math.inf
            logp[:, BOS] = -math.inf
            logp[finished] = -math.inf
            logp[finished, PAD] = 0.0  # a finished beam only pads, keeping its score
            vocab = logp.shape[1]
            candidates = (scores.view(-1, 1) + logp).view(n, beams * vocab)
            scores, index = candidates.topk(beams, dim=1)
            beam, word = index // vocab, index % vocab
            flat = (rows * beams + beam).view(-1)
            words = torch.cat([words[flat], word.view(-1, 1)], dim=1)
            if state is not None:
                state = [h[flat] for h in state]
            was_finished = finished[flat]
            lengths = lengths[flat] + (~was_finished).float()
            finished = was_finished | (word.view(-1) == EOS)
            if bool(finished.all()):
                break
        final = scores.view(-1) / lengths.clamp(min=1.0).pow(length_penalty)
        best = final.view(n, beams).argmax(dim=1)
        out = []
        for i, b in enumerate(best.tolist()):
            ids = words[i * beams + b, 1:].tolist()
            out.append([t for t in ids if t not in (PAD, EOS)][: self.max_length])
        return out


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, width) -> (N, heads, L, width / heads)."""
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, d) -> (N, L, heads * d)."""
    n, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * d)


def state_for_file(decoder: CaptionDecoder, vocabulary: Sequence[str], image_fingerprint: str) -> tuple[dict, dict]:
    """Tensors and header metadata of a captioner weights file."""
    tensors = {k: v.detach().half().contiguous() for k, v in decoder.state_dict().items() if k != "out.weight"}
    metadata = {
        "format": "geobimors-mini-captioner/1",
        "config": json.dumps(decoder.config),
        "vocabulary": json.dumps(list(vocabulary)),
        "image_model": "mini",
        "image_fingerprint": image_fingerprint,
    }
    return tensors, metadata


def load_decoder(path: Path = WEIGHTS_PATH) -> tuple[CaptionDecoder, list[str], dict[str, str]]:
    """The decoder, its vocabulary and the file's metadata (safetensors: nothing is unpickled)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"the bundled captioner weights are missing ({path}); reinstall geobimors")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        config = json.loads(metadata["config"])
        vocabulary = json.loads(metadata["vocabulary"])
        decoder = CaptionDecoder(**config)
        state = {k: v.float() for k, v in load_file(str(path)).items()}  # stored as float16
        state["out.weight"] = state["embed.weight"]
        decoder.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"captioner weights {path} are not a geobimors mini captioner ({exc})") from None
    return decoder.eval(), list(vocabulary), metadata


def image_features(clip: Any, chips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """What the decoder reads: pooled embeddings (N, E) and visual tokens (N, T, W) of uint8 chips."""
    return clip.encode_images_with_tokens(clip.preprocess(chips))


class MiniCaptioner:
    """Captions chips with the bundled image tower and caption decoder.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (the image tower's autocast).
        beams: beam width.
        weights: the decoder file (default: the bundled one).
    """

    kind = "mini"

    def __init__(
        self, device: str = "auto", precision: str = "fp32", beams: int = 3, weights: Path = WEIGHTS_PATH
    ) -> None:
        from geobimors.models.clip import load_model

        self.clip = load_model("mini", device, precision)
        self.decoder, self.vocabulary, metadata = load_decoder(weights)
        if metadata.get("image_fingerprint") != self.clip.fingerprint:
            raise ModelError(
                f"the mini captioner was trained on image weights {metadata.get('image_fingerprint')}, but the "
                f"bundled mini model is {self.clip.fingerprint}; retrain it with training/train_mini_captioner.py"
            )
        self.decoder.to(self.clip.device)
        self.beams = beams
        # Which weights made a caption: cached captions of an older release are not this one's.
        self.fingerprint = f"{hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}/{self.clip.fingerprint}"

    def features(self, chips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled embeddings (N, E) and visual tokens (N, T, W) of (N, H, W, 3) uint8 chips."""
        return image_features(self.clip, chips)

    @torch.no_grad()
    def caption_features(self, pooled: torch.Tensor, tokens: torch.Tensor) -> list[str]:
        """Captions from image features (see :meth:`features`)."""
        memory = self.decoder.memory(pooled.float(), tokens.float())
        ids = self.decoder.generate(memory, self.beams)
        return [detokenize([self.vocabulary[i] for i in seq]) for seq in ids]

    def generate(self, chips: Sequence[np.ndarray]) -> list[str]:
        """Captions of (H, W, 3) uint8 chips of one size."""
        if len(chips) == 0:
            return []
        return self.caption_features(*self.features(np.stack(list(chips))))


def describe() -> dict[str, Any]:
    """What the bundled captioner file says about itself (for model cards and ``--help``)."""
    _, vocabulary, metadata = load_decoder()
    return {"vocabulary": len(vocabulary), **json.loads(metadata["config"])}

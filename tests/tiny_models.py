"""Tiny CLIP models built locally from small configs (random weights, never downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# Every width different (visual tokens 64, text tokens 32, joint embedding 24): a head that
# confuses one width with another gets another parameter count.
TINY_VIT_UNEQUAL = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_clip_dir(directory: Path, seed: int = 0, config: dict | None = None, blind: bool = False) -> Path:
    """Write an open_clip model folder (config + safetensors weights) and return it.

    The folder loads with ``--model local-dir:DIR`` (or just ``DIR``), the same
    route users take for offline models.

    Args:
        directory: the folder to write.
        seed: seed of the random weights.
        config: open_clip model config (default: :data:`TINY_VIT`).
        blind: zero the patch embedding, so that every image gives the same
            tokens and features (tests that need the image tower to see nothing).
    """
    cfg = config or TINY_VIT
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    if blind:
        with torch.no_grad():
            model.visual.conv1.weight.zero_()
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}})
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors")
    )
    return directory

"""Head checkpoints: safetensors weights with JSON metadata in the same file.

The metadata names the head type, the CLIP model and a fingerprint of its
weights, the captioner and caption encoder, the context init, the training
classes, hyperparameters, seed and package version. Loading refuses a
checkpoint made for another CLIP. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geobimors._version import __version__
from geobimors.errors import ModelError, warn
from geobimors.heads.base import Head
from geobimors.labels import Label
from geobimors.models.anchors import DEFAULT_ANCHORS, AnchorSettings, anchors_from_config
from geobimors.models.captions import CaptionerSpec
from geobimors.models.clip import TTA_VIEWS, ClipModel
from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES

FORMAT = "geobimors-head"
FORMAT_VERSION = 1
HEAD_KINDS = ("coop", "cocoop", "bimors", "probe", "tip")
# Heads fitted on frozen pooled image embeddings (geobimors.train.embedding), not by the prompt-learning loop.
EMBEDDING_HEAD_KINDS = ("probe", "tip")


def build_head(
    kind: str,
    clip: ClipModel,
    labels: Sequence[Label],
    n_ctx: int = 4,
    ctx_init: str = "a photo of a",
    captioner: CaptionerSpec | None = None,
    caption_encoder: str = "minilm",
    templates: Sequence[str] | None = None,
    anchors: AnchorSettings | None = DEFAULT_ANCHORS,
) -> Head:
    """A new, untrained head of the given kind.

    ``templates`` and ``anchors``: prompt templates and label anchoring of the probe/tip text classifier.
    """
    from geobimors.heads.bimors import BiMoRSHead
    from geobimors.heads.cocoop import CoCoOpHead
    from geobimors.heads.coop import CoOpHead
    from geobimors.heads.probe import LinearProbeHead, TipAdapterHead

    if kind == "coop":
        return CoOpHead(clip, labels, n_ctx, ctx_init)
    if kind == "cocoop":
        return CoCoOpHead(clip, labels, n_ctx, ctx_init)
    if kind == "bimors":
        return BiMoRSHead(clip, labels, n_ctx, ctx_init, captioner, caption_encoder)
    if kind == "probe":
        return LinearProbeHead(clip, labels, templates or REMOTE_SENSING_TEMPLATES, anchors)
    if kind == "tip":
        return TipAdapterHead(clip, labels, templates or REMOTE_SENSING_TEMPLATES, anchors)
    raise ModelError(f"unknown head {kind!r}; use one of {', '.join(HEAD_KINDS)}")


def save_head(head: Head, path: str | Path, training: dict[str, Any] | None = None) -> Path:
    """Write a head's learnable weights and metadata to one safetensors file (atomically).

    Args:
        head: the trained head.
        path: output file (``.safetensors``).
        training: hyperparameters, seed, data description and results.
    """
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "geobimors_version": __version__,
        "head": head.kind,
        "clip_model": head.clip.name,
        "clip_fingerprint": head.clip.fingerprint,
        "labels": [{"name": label.name, "prompt": label.prompt} for label in head.labels],
        "config": head.config(),
        "training": training or {},
    }
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in head.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={FORMAT: json.dumps(metadata)})
    tmp.replace(path)
    return path


def warn_if_tta_differs(metadata: dict[str, Any], tta: int) -> None:
    """Warn when a head is used with other test-time views than it was trained with (``train --tta``).

    Checkpoints from before ``train --tta`` (or with an unreadable value) count as single-view.
    """
    training = metadata.get("training")
    trained = training.get("tta", 1) if isinstance(training, dict) else 1
    if not isinstance(trained, int) or trained not in TTA_VIEWS:
        trained = 1
    if trained != tta:
        warn(
            f"the head was trained with --tta {trained} and this run uses --tta {tta}: its image features "
            f"differ a little from those the head learnt; pass --tta {trained} to match"
        )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a head checkpoint.

    Raises:
        ModelError: if the file is missing, not safetensors, or has no valid metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"head checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(
            f"head checkpoint {path} is not a safetensors file geobimors wrote (or it is truncated): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    try:
        metadata = json.loads(header[FORMAT])
    except (KeyError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        raise ModelError(
            f"head checkpoint {path} has no geobimors metadata; train heads with geobimors train"
        ) from None
    if not isinstance(metadata, dict):
        raise ModelError(f"head checkpoint {path} has malformed metadata")
    missing = [k for k in ("head", "clip_model", "clip_fingerprint", "labels", "config") if k not in metadata]
    if missing or metadata.get("format") != FORMAT:
        raise ModelError(f"head checkpoint {path} metadata lacks {', '.join(missing) or 'the format tag'}")
    version = metadata.get("format_version", 0)
    if not isinstance(version, int):
        raise ModelError(f"head checkpoint {path} has malformed metadata (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise ModelError(f"head checkpoint {path} needs a newer geobimors (format {version})")
    return metadata


def checkpoint_labels(metadata: dict[str, Any]) -> list[Label]:
    """The training classes stored in a checkpoint."""
    items = metadata.get("labels")
    if not isinstance(items, list) or not items:  # a dict or string would iterate without error
        raise ModelError("head checkpoint metadata has malformed labels (not a list of classes)")
    try:
        return [Label(str(item["name"]), str(item["prompt"])) for item in items]
    except (TypeError, KeyError):
        raise ModelError("head checkpoint metadata has malformed labels") from None


def load_head(path: str | Path, clip: ClipModel, labels: Sequence[Label] | None = None) -> Head:
    """Rebuild a trained head on a loaded CLIP model.

    Args:
        path: the checkpoint.
        clip: the CLIP model; it must be the one the head was trained with.
        labels: classes to classify (default: the training classes).

    Raises:
        ModelError: for a checkpoint made for another CLIP, or an unusable file.
    """
    metadata = read_metadata(path)
    if metadata["clip_fingerprint"] != clip.fingerprint:
        raise ModelError(
            f"head {Path(path).name} was trained for CLIP {metadata['clip_model']!r} (weights "
            f"{metadata['clip_fingerprint']}), not for {clip.name!r} (weights {clip.fingerprint}); "
            f"pass --model {metadata['clip_model']}"
        )
    config = metadata["config"]
    training_labels = checkpoint_labels(metadata)
    captioner = CaptionerSpec(**config["captioner"]) if config.get("captioner") else None
    try:
        head = build_head(
            metadata["head"],
            clip,
            training_labels,
            int(config.get("n_ctx", 4)),
            str(config.get("ctx_init", "")),
            captioner,
            config.get("caption_encoder") or "minilm",
            templates=config.get("templates"),
            anchors=anchors_from_config(config),
        )
        state = load_file(str(path), device=str(clip.device))
        head.load_state_dict({k: v.to(dtype=torch.float32) for k, v in state.items()}, strict=True)
    except ModelError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"head checkpoint {path} does not fit its own metadata: {str(exc).splitlines()[0]}") from exc
    head.eval()
    if labels is not None:
        head.set_labels(labels)
    return head

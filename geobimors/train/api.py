"""Training and evaluation entry points shared by the CLI and the Python API."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geobimors.errors import InputError, check_at_least_one, warn
from geobimors.heads.base import Head, works_from_embeddings
from geobimors.heads.checkpoint import build_head, load_head, save_head
from geobimors.heads.probe import EmbeddingHead
from geobimors.models.anchors import DEFAULT_ANCHORS
from geobimors.models.captions import CaptionerSpec, load_captioner
from geobimors.models.clip import check_tta, load_model
from geobimors.models.views import check_views
from geobimors.train.data import (
    DEFAULT_MIN_PURITY,
    LabelledImages,
    images_left_per_class,
    load_geometries,
    load_image_folder,
    split_base_new,
)
from geobimors.train.embedding import fit_embedding_head
from geobimors.train.evaluate import evaluate, evaluate_base_to_new
from geobimors.train.loop import TrainResult, TrainSettings, train_head

CLASS_SETS = ("all", "base", "new")
VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet"}
DEFAULT_SHOTS = 16


@dataclass
class TrainingData:
    """Training shots and validation images, and where they came from."""

    train: LabelledImages
    val: LabelledImages | None
    description: dict[str, Any]


def _select_classes(data: LabelledImages, classes: str) -> LabelledImages:
    if classes == "all":
        return data
    base, new = split_base_new(len(data.labels))
    return data.subset(base if classes == "base" else new)


def load_training_data(
    data: str | os.PathLike[str],
    shots: int | None,
    seed: int = 0,
    labels_file: str | os.PathLike[str] | None = None,
    classes: str = "all",
    val_shots: int = 16,
    scene: str | None = None,
    label_column: str = "label",
    model: str = "mini",
    chip_size: str | None = None,
    bands: tuple[int, ...] | None = None,
    min_purity: float = DEFAULT_MIN_PURITY,
    allow_network: bool = False,
) -> TrainingData:
    """K shots per class for training and disjoint images for validation.

    ``data`` is an ImageFolder tree (class folders), a folder with ``train/``
    (and ``val/``) trees, or a vector file of labelled polygons or points over
    ``scene`` (every grid chip they cover to ``min_purity``). Without a ``val/``
    tree, validation takes ``val_shots`` other images per class; when some class
    has no image left (e.g. 10 images and ``--shots 10``), there is no
    validation split: a warning says so, prompt learners keep their last epoch
    and embedding heads cross-validate on the shots. ``val_shots=0`` asks for
    no validation. With polygons, whole geometries are held out for validation
    (chips of one polygon look alike). ``shots=None``: 16 per class for image
    folders, every chip for polygons and points.
    """
    if classes not in CLASS_SETS:
        raise InputError(f"--classes {classes!r}: use all, base or new")
    val: LabelledImages | None = None
    if val_shots < 0:
        raise InputError(f"--val-shots must be 0 or more, got {val_shots}")
    path = Path(data)
    if path.suffix.lower() in VECTOR_SUFFIXES:
        if scene is None:
            raise InputError(f"training from polygons or points in {path} needs --scene RASTER")
        chips, groups = load_geometries(
            path, scene, label_column, chip_size, model, bands, min_purity=min_purity, allow_network=allow_network
        )
        train_idx, val_idx = _split_geometries(chips.targets, groups, shots, seed, val_shots > 0)
        everything = chips
        train = _select_classes(everything.take(train_idx), classes)
        if len(val_idx):
            val = _select_classes(everything.take(val_idx), classes)
        if val is None and val_shots > 0:
            warn(
                f"{path}: no class has two or more geometries to hold one out, so there is no validation split "
                "(prompt learners keep their last epoch); label more polygons or points per class"
            )
        description = {
            "geometries": str(path),
            "scene": scene,
            "label_column": label_column,
            "min_purity": min_purity,
            "chips": {label.name: int((everything.targets == k).sum()) for k, label in enumerate(everything.labels)},
        }
        return TrainingData(train, val, description)
    shots = DEFAULT_SHOTS if shots is None else shots
    root = path / "train" if (path / "train").is_dir() else path
    train = _select_classes(load_image_folder(root, shots, seed, labels_file), classes)
    val_root = path / "val" if (path / "val").is_dir() else None
    if val_shots == 0:
        pass
    elif val_root is not None:
        val = _select_classes(load_image_folder(val_root, val_shots, seed, labels_file, at_most=True), classes)
    else:
        left = images_left_per_class(root, set(train.sources))
        empty = [folder for folder, n in left.items() if n == 0]
        if empty:
            warn(
                f"class folder {root / empty[0]} has no image left for validation after {shots} shots, so there "
                "is no validation split: prompt learners keep their last epoch and probe/tip heads cross-validate "
                "on the shots; add a val/ tree (DATA/train/CLASS, DATA/val/CLASS) or lower --shots"
            )
        else:
            val = _select_classes(
                load_image_folder(root, val_shots, seed + 1, labels_file, exclude=set(train.sources), at_most=True),
                classes,
            )
    return TrainingData(
        train, val, {"train": str(root), "val": str(val_root or root) if val else None, "classes": classes}
    )


def _split_geometries(
    targets: np.ndarray, groups: np.ndarray, shots: int | None, seed: int, validate: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Chip indexes for training and validation, holding out whole geometries.

    Per class: a fifth of its geometries (at least one when it has two) for
    validation; up to ``shots`` chips of the others for training (all with ``None``).
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        geometries = rng.permutation(np.unique(groups[members]))
        n_val = (max(1, len(geometries) // 5) if len(geometries) >= 2 else 0) if validate else 0
        held = np.isin(groups[members], geometries[:n_val])
        val += list(members[held])
        rest = rng.permutation(members[~held])
        train += list(rest if shots is None else rest[:shots])
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def caption_function(head: Head, device: str, precision: str) -> Callable[[np.ndarray], list[str]] | None:
    """Captions of chips for heads that read them from a captioner (cached on disk)."""
    spec = getattr(head, "captioner", None)
    if not head.uses_captions or spec is None or spec.is_none:
        return None
    captioner = load_captioner(spec, device, precision)
    return captioner.caption


def train(
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: str = "mini",
    head: str = "tip",
    shots: int | None = None,
    settings: TrainSettings | None = None,
    captioner: str = "none",
    caption_encoder: str = "minilm",
    n_ctx: int = 4,
    ctx_init: str = "a photo of a",
    labels_file: str | os.PathLike[str] | None = None,
    classes: str = "all",
    val_shots: int = 16,
    tta: int = 1,
    device: str = "auto",
    precision: str = "fp32",
    overwrite: bool = False,
    progress: str = "bar",
    log: Callable[[str], None] | None = None,
    **polygon_options: Any,
) -> tuple[Head, TrainResult]:
    """Train a head few-shot and save it as a checkpoint.

    ``head`` is ``tip`` (default) or ``probe`` (fitted on frozen image embeddings in
    seconds), or a prompt learner ``bimors``, ``coop``, ``cocoop`` (trained for
    ``settings.epochs``). ``tta`` trains on image features averaged over 1, 2, 4 or 8
    turned/mirrored views of each image (:meth:`ClipModel.with_tta`; recorded in the
    checkpoint: map with the same ``--tta``). Other arguments are the ``geobimors train`` options.

    Returns:
        The trained head and the training result.
    """
    settings = settings or TrainSettings()
    out = Path(output)
    if out.exists() and not overwrite:
        raise InputError(f"output {out} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise InputError(f"output directory {out.parent} does not exist")
    check_at_least_one(shots, "--shots")
    clip = load_model(model, device, precision, tta)  # checks tta first
    loaded = load_training_data(
        data, shots, settings.seed, labels_file, classes, val_shots, model=model, **polygon_options
    )
    spec = CaptionerSpec(captioner) if captioner else CaptionerSpec("none")
    new_head = build_head(head, clip, loaded.train.labels, n_ctx, ctx_init, spec, caption_encoder)
    training: dict[str, Any]
    if isinstance(new_head, EmbeddingHead):
        result, details = fit_embedding_head(new_head, loaded.train, loaded.val, settings.seed, progress, log)
        training = {"seed": settings.seed, "fit": details}
    else:
        captions = caption_function(new_head, device, precision)
        result = train_head(new_head, loaded.train, loaded.val, settings, captions, progress, log)
        training = {"settings": asdict(settings), "seed": settings.seed}
    save_head(
        new_head,
        out,
        {
            **training,
            "tta": tta,
            "shots": shots,
            "examples": len(loaded.train),
            "validation_examples": len(loaded.val) if loaded.val is not None else 0,
            "data": loaded.description,
            "result": result.to_dict(),
        },
    )
    return new_head, result


def evaluate_data(
    data: str | os.PathLike[str],
    model: str | None = None,
    head: str | Path | None = None,
    labels_file: str | os.PathLike[str] | None = None,
    protocol: str = "all",
    limit_per_class: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 64,
    tta: int = 1,
    views: int = 1,
    view_blend: float | None = None,
    literal_labels: bool = False,
) -> dict[str, Any]:
    """Evaluate a head (or zero-shot CLIP) on an ImageFolder tree.

    Args:
        data: ImageFolder tree (a folder with ``val/`` is evaluated on ``val/``).
        model: CLIP model (default: the head's, else ``mini``).
        head: trained head checkpoint; ``None`` for zero-shot.
        labels_file: ``FolderName: prompt text`` lines.
        protocol: ``all`` (every class together) or ``base-to-new``.
        limit_per_class: evaluate at most this many images per class (sampled with ``seed``).
        seed: sampling seed.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        batch_size: images per forward pass.
        tta: test-time augmentation views (1, 2, 4 or 8; :meth:`ClipModel.with_tta`).
        views: detail views (1, 5 or 6): each image's features blended with its quadrants' (and
            centre crop's), which reach the model at twice the detail (:meth:`ClipModel.embed_chips`).
        view_blend: the sub-views' weight (default :data:`~geobimors.models.clip.DEFAULT_VIEW_BLEND`).
        literal_labels: zero-shot: read every label as written, without anchoring labels the model
            was not trained on (:mod:`geobimors.models.anchors`).

    Returns:
        A JSON-ready report with an ``accuracy`` field.
    """
    from geobimors.heads.checkpoint import read_metadata, warn_if_tta_differs
    from geobimors.heads.zero_shot import ZeroShotHead

    if protocol not in ("all", "base-to-new"):
        raise InputError(f"--protocol {protocol!r}: use all or base-to-new")
    check_at_least_one(batch_size, "--batch-size")
    check_at_least_one(limit_per_class, "--limit-per-class")
    check_tta(tta)
    check_views(views, view_blend)
    path = Path(data)
    root = path / "val" if (path / "val").is_dir() else path
    images = load_image_folder(root, limit_per_class, seed, labels_file, at_most=True)
    metadata = read_metadata(head) if head is not None else None
    if metadata:
        warn_if_tta_differs(metadata, tta)
    model_name = model or (str(metadata["clip_model"]) if metadata else "mini")
    clip = load_model(model_name, device, precision, tta).with_views(views, view_blend)
    anchors = None if literal_labels else DEFAULT_ANCHORS
    evaluated: Head = load_head(head, clip) if head is not None else ZeroShotHead(clip, images.labels, anchors=anchors)
    if views > 1 and not works_from_embeddings(evaluated):
        raise InputError(
            f"--views blends pooled image features, which the {evaluated.kind} head does not classify from; "
            "drop --views (zero-shot, coop, cocoop, probe and tip heads take it)"
        )
    captions = caption_function(evaluated, device, precision)
    overall = evaluate(evaluated, images, batch_size, captions)
    report: dict[str, Any] = {
        "data": str(root),
        "model": model_name,
        "head": str(head) if head is not None else "zero-shot",
        "tta": tta,
        "views": views,
        "view_blend": clip.view_blend if views > 1 else None,
        **overall.to_dict(),
    }
    if isinstance(evaluated, ZeroShotHead):  # labels read through the model's nearest trained classes
        mixes = evaluated.anchor_mix.tolist()
        report["anchored_labels"] = [label.name for label, mix in zip(evaluated.labels, mixes) if mix > 0]
    if protocol == "base-to-new":
        report["base_to_new"] = evaluate_base_to_new(evaluated, images, batch_size, captions)
    report["_evaluation"] = overall
    return report

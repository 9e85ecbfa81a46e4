"""Retrieval, measured as the remote-sensing retrieval papers measure it.

Class-level retrieval (:func:`class_retrieval_metrics`): each class prompt is a query and the
images of that class are relevant (mAP, R@K, P@K); used by the retrieval-quality benchmark of
``geobimors search``. Ranking is by descending score; ties keep the items' original order.

Image-text retrieval (:func:`retrieval_recalls`, :func:`evaluate_retrieval`) follows the protocol of
the UCM-Captions / RSICD / RSITMD tables (AMFMN, GaLR, PE-RSITR, RemoteCLIP): every test image and
every one of its captions are embedded; each image ranks all test captions (image->text, a hit at k
when *any* of its own captions is among the k best) and each caption ranks all test images
(text->image, a hit when its image is among the k best). R@1/5/10 both ways are reported in percent,
and mR is the mean of the six.

Two caption-set formats are read: the shared one-JSON-object-per-line format
(``{"image": path relative to the file, "split": ..., "captions": [...]}``) and
the Karpathy-style ``dataset.json`` (``{"images": [{"filename", "filepath"?,
"split", "sentences": [{"raw": ...}]}]}``) used by the RSICD/UCM/Sydney releases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geobimors.errors import InputError, check_at_least_one
from geobimors.models.views import check_views, encode_views

#: Largest caption file read (the RSICD dataset.json is about 10 MB).
MAX_CAPTION_FILE_BYTES = 512 * 1024 * 1024
RECALL_KS = (1, 5, 10)


@dataclass
class CaptionSet:
    """Images of one split with their captions.

    Attributes:
        source: the caption file.
        split: the split read.
        images: image paths.
        captions: captions of each image (empty captions dropped).
    """

    source: Path
    split: str
    images: list[Path]
    captions: list[list[str]]

    @property
    def texts(self) -> list[str]:
        """Every caption, image after image."""
        return [text for group in self.captions for text in group]

    @property
    def text_image(self) -> np.ndarray:
        """(T,) index of the image each caption of :attr:`texts` describes."""
        return np.repeat(np.arange(len(self.captions)), [len(group) for group in self.captions])


def _read_json_file(path: Path) -> str:
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise InputError(f"caption file {path} {what}: give a .jsonl or Karpathy-style dataset.json file")
    size = path.stat().st_size
    if size > MAX_CAPTION_FILE_BYTES:
        raise InputError(f"caption file {path} is {size / 2**20:.0f} MiB, more than the 512 MiB a caption set can be")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read caption file {path}: {exc}") from None


def _jsonl_records(path: Path, text: str, images_root: Path) -> list[tuple[Path, str, list[str]]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            image, split, captions = item["image"], str(item.get("split", "")), item["captions"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(
                f"{path} line {number}: not a caption record ({type(exc).__name__}: {exc}); "
                'each line must be {"image": ..., "split": ..., "captions": [...]}'
            ) from None
        if not isinstance(captions, list):
            raise InputError(f"{path} line {number}: 'captions' must be a list of strings")
        records.append((images_root / str(image), split, [str(c) for c in captions]))
    return records


def _karpathy_records(path: Path, data: Any, images_root: Path) -> list[tuple[Path, str, list[str]]]:
    try:
        items = data["images"]
        records = []
        for item in items:
            folder = images_root / item["filepath"] if item.get("filepath") else images_root
            sentences = [s["raw"] if "raw" in s else " ".join(s["tokens"]) for s in item["sentences"]]
            records.append((folder / item["filename"], str(item.get("split", "")), [str(s) for s in sentences]))
    except (KeyError, TypeError) as exc:
        raise InputError(
            f"{path} is not a Karpathy-style dataset.json ({type(exc).__name__}: {exc}): "
            "expected {'images': [{'filename', 'split', 'sentences': [{'raw'}]}]}"
        ) from None
    return records


def load_caption_set(
    path: str | os.PathLike[str], split: str = "test", images_root: str | os.PathLike[str] | None = None
) -> CaptionSet:
    """Read one split of a caption set.

    Args:
        path: a ``.jsonl`` caption file or a Karpathy-style ``dataset.json``.
        split: the split to read (``test``, ``val``, ``train``; ``all`` for every image).
        images_root: folder image paths are relative to (default: the caption file's folder;
            for ``dataset.json`` usually the folder holding the images).

    Raises:
        InputError: unreadable or malformed file, unknown split, missing images.
    """
    path = Path(path)
    root = Path(images_root) if images_root is not None else path.parent
    text = _read_json_file(path)
    if path.suffix.lower() == ".jsonl":
        records = _jsonl_records(path, text, root)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not JSON ({exc}); give a .jsonl caption file or a dataset.json") from None
        records = _karpathy_records(path, data, root)
    splits = sorted({s for _, s, _ in records})
    chosen = [r for r in records if split == "all" or r[1] == split]
    if not chosen:
        raise InputError(f"{path} has no images in split {split!r}; its splits: {', '.join(splits) or 'none'}")
    images, captions = [], []
    for image, _, texts in chosen:
        kept = [t.strip() for t in texts if t.strip()]
        if kept:  # RSITMD has a few empty captions: an image keeps the captions it has
            images.append(image)
            captions.append(kept)
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(images)} images of {path} are missing (first: {missing[0]}); "
            "pass --images DIR, the folder the image paths are relative to"
        )
    return CaptionSet(path, split, images, captions)


def retrieval_recalls(
    similarity: np.ndarray, text_image: np.ndarray, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """Recall@k both ways and their mean, in percent.

    Ties are broken at random, in expectation: a hit counts with the probability that a
    uniformly random order of the tied candidates puts an own item within the top k.
    UCM-Captions repeats captions word for word across images, so ties are common; this
    neither rewards a model that gives every caption the same embedding (it scores chance)
    nor penalises a good one for the dataset's duplicates, and it is deterministic.

    Args:
        similarity: (I, T) image-caption similarities.
        text_image: (T,) the image each caption belongs to.
        ks: the cut-offs.

    Returns:
        ``i2t_R@k``, ``t2i_R@k`` for each k, and ``mR`` (mean of all of them).
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    n_images, n_texts = similarity.shape
    if len(text_image) != n_texts:
        raise ValueError(f"{len(text_image)} caption owners for {n_texts} captions")
    own = np.zeros_like(similarity, dtype=bool)
    own[text_image, np.arange(n_texts)] = True
    # image -> text: where the best of its own captions lands
    best_own = np.where(own, similarity, -np.inf).max(axis=1, keepdims=True)
    i2t = _tied_ranks(similarity, own, best_own, axis=1)
    # text -> image: where its own image lands among all images
    own_score = similarity[text_image, np.arange(n_texts)][None, :]
    t2i = _tied_ranks(similarity, own, own_score, axis=0)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * float(_hit_probability(*i2t, k).mean()) if n_images else 0.0
    for k in ks:
        out[f"t2i_R@{k}"] = 100.0 * float(_hit_probability(*t2i, k).mean()) if n_texts else 0.0
    out["mR"] = float(np.mean(list(out.values())))
    return out


def _tied_ranks(
    similarity: np.ndarray, own: np.ndarray, best: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: wrong candidates above the best own score, wrong ones tied with it, own ones tied with it."""
    above = ((similarity > best) & ~own).sum(axis=axis)
    tied_wrong = ((similarity == best) & ~own).sum(axis=axis)
    tied_own = ((similarity == best) & own).sum(axis=axis)
    return above, tied_wrong, tied_own


def _hit_probability(above: np.ndarray, tied_wrong: np.ndarray, tied_own: np.ndarray, k: int) -> np.ndarray:
    """P(an own item is within the top k) when the tied items are shuffled uniformly.

    With ``t`` wrong and ``m`` own items tied, the number ``X`` of wrong ones before the
    first own one has P(X >= j) = prod_{i<j} (t - i) / (t + m - i); a hit needs X < k - above.
    """
    slots = k - above
    out = np.zeros(len(above), dtype=np.float64)
    for q in np.flatnonzero(slots > 0):
        t, m, j = int(tied_wrong[q]), int(tied_own[q]), int(slots[q])
        miss = 1.0
        for i in range(j):
            if i >= t:
                miss = 0.0
                break
            miss *= (t - i) / (t + m - i)
        out[q] = 1.0 - miss
    return out


#: Allowed ``views`` of :func:`evaluate_retrieval`: the full image; + its four quadrants; + its centre crop.
NO_CAPTIONER = "none"  # geobimors.models.captions.NO_CAPTIONER, without importing torch here
CAPTIONER_NONE = "--caption-guidance needs captions: name a captioner (--captioner mini), not 'none'"


def check_retrieval_options(
    views: int, view_blend: float | None, caption_guidance: float | None, captioner: str = "mini"
) -> None:
    """Refuse bad multi-view and caption-guidance settings with a one-line message.

    Raises:
        InputError: ``views`` not in :data:`VIEW_COUNTS`, a weight outside 0..1 (or NaN), a
            view blend without sub-views, or caption guidance without a captioner.
    """
    check_views(views, view_blend)
    if caption_guidance is not None and not 0.0 <= caption_guidance <= 1.0:  # NaN fails both comparisons
        raise InputError(f"--caption-guidance must be a weight between 0 and 1, got {caption_guidance}")
    if caption_guidance is not None and captioner == NO_CAPTIONER:
        raise InputError(CAPTIONER_NONE)


def aggregate_views(similarity: np.ndarray, view_blend: float | None = None) -> np.ndarray:
    """One image-text similarity from the similarities of every view.

    Args:
        similarity: (I, V, T) similarity of each view of each image to each text; view 0 is the
            full image.
        view_blend: ``None``: max-response over all views (MPS-CLIP); a weight ``b`` in 0..1:
            ``(1 - b) * full view + b * max over the sub-views``.

    Returns:
        (I, T) similarities.
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 3:
        raise ValueError(f"similarity must be (images, views, texts), got shape {similarity.shape}")
    if similarity.shape[1] == 1:
        return similarity[:, 0]
    if view_blend is None:
        return similarity.max(axis=1)
    return (1.0 - view_blend) * similarity[:, 0] + view_blend * similarity[:, 1:].max(axis=1)


def guided_similarity(image_text: np.ndarray, caption_text: np.ndarray, weight: float) -> np.ndarray:
    """Keyword guidance: image-text similarity blended with the similarity of each image's caption to each text.

    ``(1 - weight) * image_text + weight * caption_text``; the one matrix ranks both ways
    (image->text and text->image).

    Args:
        image_text: (I, T) image-text similarities.
        caption_text: (I, T) similarity of each image's generated caption to each text (same text encoder).
        weight: the caption's share, 0..1 (0: plain retrieval).
    """
    if image_text.shape != caption_text.shape:
        raise ValueError(f"image-text {image_text.shape} and caption-text {caption_text.shape} shapes differ")
    return (1.0 - weight) * np.asarray(image_text) + weight * np.asarray(caption_text)


def load_retrieval_captioner(name: str, device: str = "auto", precision: str = "fp32") -> Any:
    """The captioner of keyword guidance: beam 3, 16 words at most, captions cached on disk.

    Args:
        name: ``mini`` (bundled) or a BLIP / BLIP-2 checkpoint.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.

    Returns:
        An object whose ``caption(chips)`` returns one caption per (H, W, 3) uint8 chip.
    """
    from geobimors.models.captions import CaptionerSpec, load_captioner

    if name == NO_CAPTIONER:
        raise InputError(CAPTIONER_NONE)
    return load_captioner(CaptionerSpec(name, max_new_tokens=16, num_beams=3), device, precision)


def evaluate_retrieval(
    captions: str | os.PathLike[str],
    model: str = "mini",
    split: str = "test",
    images_root: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 64,
    views: int = 1,
    view_blend: float | None = None,
    caption_guidance: float | None = None,
    captioner: str = "mini",
    tta: int = 1,
) -> dict[str, Any]:
    """Image-text retrieval of a CLIP model on one split of a caption set.

    Args:
        captions: caption file (see :func:`load_caption_set`).
        model: CLIP model name (see :mod:`geobimors.models.clip`).
        split: the split to evaluate (never train on it).
        images_root: folder the image paths are relative to.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        batch_size: images per forward pass.
        views: 1 (the full image), 5 (+ its quadrants) or 6 (+ its centre crop): multi-perspective
            views, aggregated by :func:`aggregate_views`.
        view_blend: ``None`` for max-response over all views, else the sub-views' weight against the full view.
        caption_guidance: ``None`` (off) or the weight of keyword guidance (:func:`guided_similarity`).
        captioner: the captioner of keyword guidance (``mini``, or a BLIP / BLIP-2 checkpoint).
        tta: each view's features averaged over 1, 2, 4 or 8 of its turns and mirror images
            (:meth:`~geobimors.models.clip.ClipModel.with_tta`).

    Returns:
        A JSON-ready report: recalls in percent, ``mR``, the counts and the setting.

    Raises:
        InputError: bad options (checked before any model loads) or a bad caption set.
    """
    import torch

    from geobimors.models.clip import check_tta, load_model
    from geobimors.raster.images import read_rgb

    check_retrieval_options(views, view_blend, caption_guidance, captioner)
    check_at_least_one(batch_size, "--batch-size")
    check_tta(tta)
    data = load_caption_set(captions, split, images_root)
    clip = load_model(model, device, precision, tta)
    guide = load_retrieval_captioner(captioner, device, precision) if caption_guidance is not None else None
    first = read_rgb(data.images[0])
    size = (first.shape[1], first.shape[0])  # a few UC Merced images are off-size: all take the first's size
    image_features, generated = [], []
    for start in range(0, len(data.images), batch_size):
        chips = np.stack([read_rgb(p, size) for p in data.images[start : start + batch_size]])
        image_features.append(encode_views(clip, chips, views).cpu())
        if guide is not None:
            generated += guide.caption(chips)
    with torch.no_grad():
        text_features = clip.encode_texts(data.texts).cpu()
    per_view = torch.einsum("ivd,td->ivt", torch.cat(image_features), text_features).numpy()
    similarity = aggregate_views(per_view, view_blend)
    report: dict[str, Any] = {
        "task": "retrieval",
        "data": str(data.source),
        "split": split,
        "model": model,
        "n_images": len(data.images),
        "n_captions": len(data.texts),
        "views": views,
        "view_aggregation": "max" if view_blend is None else f"blend {view_blend}",
        "tta": tta,
    }
    if guide is not None and caption_guidance is not None:
        with torch.no_grad():
            caption_features = clip.encode_texts(generated).cpu()
        similarity = guided_similarity(similarity, (caption_features @ text_features.T).numpy(), caption_guidance)
        report.update(caption_guidance=caption_guidance, captioner=captioner)
        report["examples"] = [
            {"image": str(p), "generated": g}
            for p, g in list(zip(data.images, generated))[:: max(1, len(generated) // 5)]
        ]
    report.update(retrieval_recalls(similarity, data.text_image))
    return report


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision of one ranked query (the area under its precision-recall curve, step-wise).

    The mean, over the relevant items, of the precision at the rank where each is retrieved;
    the same definition as ``sklearn.metrics.average_precision_score`` when scores have no ties.

    Args:
        scores: (N,) similarity of every item to the query.
        relevant: (N,) boolean relevance of every item.

    Returns:
        AP in 0..1 (NaN when no item is relevant).
    """
    relevant = np.asarray(relevant, dtype=bool)
    n_relevant = int(relevant.sum())
    if n_relevant == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked = relevant[order]
    ranks = np.flatnonzero(ranked) + 1  # 1-based ranks of the relevant items
    precision_at_hits = np.arange(1, n_relevant + 1) / ranks
    return float(precision_at_hits.mean())


def class_retrieval_metrics(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, Any]:
    """Text-to-image retrieval where query ``c`` (a class prompt) should find the images of class ``c``.

    Args:
        scores: (C, N) similarity of every class query to every image.
        targets: (N,) class index of every image.
        class_names: the C class names (report keys).
        ks: cut-offs for recall@K and precision@K.

    Returns:
        ``mAP`` (mean over classes of :func:`average_precision`), ``R@K`` (fraction of queries with
        at least one relevant image in their top K, the usual image-text retrieval recall),
        ``P@K`` (mean fraction of relevant images in the top K), and ``per_class_AP``.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != (len(class_names), len(targets)):
        raise ValueError(f"scores must be (classes, items) = ({len(class_names)}, {len(targets)}), got {scores.shape}")
    per_class: dict[str, float] = {}
    hits: dict[int, list[float]] = {k: [] for k in ks}
    precisions: dict[int, list[float]] = {k: [] for k in ks}
    for c, name in enumerate(class_names):
        relevant = targets == c
        per_class[name] = average_precision(scores[c], relevant)
        ranked = relevant[np.argsort(-scores[c].astype(np.float64), kind="stable")]
        for k in ks:
            top = ranked[:k]
            hits[k].append(float(top.any()))
            precisions[k].append(float(top.mean()) if len(top) else 0.0)
    valid = [v for v in per_class.values() if not np.isnan(v)]
    report: dict[str, Any] = {"mAP": float(np.mean(valid)) if valid else float("nan")}
    report.update({f"R@{k}": float(np.mean(hits[k])) for k in ks})
    report.update({f"P@{k}": float(np.mean(precisions[k])) for k in ks})
    report["per_class_AP"] = per_class
    report["n_queries"] = len(class_names)
    report["n_items"] = len(targets)
    return report

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

from geobimors.errors import InputError

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


def evaluate_retrieval(
    captions: str | os.PathLike[str],
    model: str = "mini",
    split: str = "test",
    images_root: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 64,
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

    Returns:
        A JSON-ready report: recalls in percent, ``mR``, the counts and the setting.
    """
    import torch

    from geobimors.models.clip import load_model
    from geobimors.raster.images import read_rgb

    data = load_caption_set(captions, split, images_root)
    clip = load_model(model, device, precision)
    first = read_rgb(data.images[0])
    size = (first.shape[1], first.shape[0])  # a few UC Merced images are off-size: all take the first's size
    image_features = []
    with torch.no_grad():
        for start in range(0, len(data.images), batch_size):
            chips = np.stack([read_rgb(p, size) for p in data.images[start : start + batch_size]])
            image_features.append(clip.encode_images(clip.preprocess(chips)).cpu())
        text_features = clip.encode_texts(data.texts).cpu()
    similarity = (torch.cat(image_features) @ text_features.T).numpy()
    return {
        "task": "retrieval",
        "data": str(data.source),
        "split": split,
        "model": model,
        "n_images": len(data.images),
        "n_captions": len(data.texts),
        **retrieval_recalls(similarity, data.text_image),
    }


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

"""Caption quality as the captioning papers measure it: BLEU-1..4, ROUGE-L and CIDEr-D.

Scores come from ``pycocoevalcap``, the COCO caption evaluation code that the
remote-sensing captioning papers (UCM-Captions, Sydney, RSICD) report with.
Captions are lower-cased and split into words with punctuation dropped (what the
COCO toolkit's PTB tokenizer does for these captions, without needing Java).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from geobimors.errors import InputError

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")


def _scorers() -> tuple[object, object, object]:
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise InputError(
            "caption metrics need the COCO caption evaluation code: pip install pycocoevalcap "
            "(or pip install 'geobimors[eval]')"
        ) from None
    return Bleu(4), Rouge(), Cider()


def caption_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus-level BLEU-1..4, ROUGE-L and CIDEr-D of candidate captions against their references.

    Args:
        candidates: one generated caption per image.
        references: the reference captions of each image.

    Returns:
        The :data:`METRICS`, as fractions (BLEU, ROUGE-L in 0..1; CIDEr usually 0..~5).
    """
    from geobimors.models.mini.captioner import tokenize

    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference sets")
    if not candidates:
        raise ValueError("no captions to score")
    res = {i: [" ".join(tokenize(c)) or "<empty>"] for i, c in enumerate(candidates)}
    gts = {i: [" ".join(tokenize(r)) for r in refs if tokenize(r)] for i, refs in enumerate(references)}
    if any(not refs for refs in gts.values()):
        raise ValueError("every image needs at least one non-empty reference caption")
    bleu, rouge, cider = _scorers()
    bleu_scores, _ = bleu.compute_score(gts, res, verbose=0)  # type: ignore[attr-defined]
    rouge_score, _ = rouge.compute_score(gts, res)  # type: ignore[attr-defined]
    cider_score, _ = cider.compute_score(gts, res)  # type: ignore[attr-defined]
    return dict(zip(METRICS, [*map(float, bleu_scores), float(rouge_score), float(cider_score)]))


def evaluate_captioning(
    captions: str | os.PathLike[str],
    captioner: str = "mini",
    split: str = "test",
    images_root: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 32,
    max_new_tokens: int = 16,
    num_beams: int = 3,
) -> dict[str, Any]:
    """Caption every image of one split of a caption set and score the captions.

    Args:
        captions: caption file (see :func:`geobimors.train.retrieval.load_caption_set`).
        captioner: ``mini`` (bundled) or a BLIP / BLIP-2 checkpoint.
        split: the split to caption (never train on it).
        images_root: folder the image paths are relative to.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        batch_size: images per captioning call.
        max_new_tokens: caption length limit (hub captioners).
        num_beams: beam width.

    Returns:
        A JSON-ready report: the :data:`METRICS`, counts, and a few example captions.
    """
    import numpy as np

    from geobimors.models.captions import Captioner, CaptionerSpec
    from geobimors.raster.images import read_rgb
    from geobimors.train.retrieval import load_caption_set

    data = load_caption_set(captions, split, images_root)
    model = Captioner(CaptionerSpec(captioner, max_new_tokens, num_beams), device, precision, cache=None)
    first = read_rgb(data.images[0])
    size = (first.shape[1], first.shape[0])
    generated: list[str] = []
    for start in range(0, len(data.images), batch_size):
        chips = np.stack([read_rgb(p, size) for p in data.images[start : start + batch_size]])
        generated += model.caption(chips, batch_size=batch_size)
    return {
        "task": "captioning",
        "data": str(data.source),
        "split": split,
        "captioner": captioner,
        "n_images": len(data.images),
        **caption_scores(generated, data.captions),
        "examples": [
            {"image": str(p), "generated": g, "reference": r[0]}
            for p, g, r in list(zip(data.images, generated, data.captions))[:: max(1, len(generated) // 10)]
        ],
    }

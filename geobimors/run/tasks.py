"""The unit of work: a batch of chip windows that a task reads and classifies itself.

A task receives only small values (the scene path inside :class:`ReadSpec`, a
range of chips, a :class:`ClassifierSpec`), never pixels or models, so the same
function runs in a thread of this process or on a remote Dask worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from geobimors.heads.classifier import ClassifierSpec, get_classifier
from geobimors.models.captions import CaptionerSpec, load_captioner
from geobimors.raster.read import ChipReader, ReadSpec
from geobimors.run.plan import Batch


@dataclass
class BatchResult:
    """What a task returns for its batch (every chip, classified or skipped).

    Attributes:
        batch: the batch.
        rows: (N,) grid rows.
        cols: (N,) grid columns.
        windows: (N, 4) footprint windows: col_off, row_off, width, height.
        valid_fraction: (N,) fraction of valid pixels per chip.
        classified: (N,) True for chips that were classified.
        top_index: (M, k) label indexes of the k best labels of each classified chip.
        top_score: (M, k) their probabilities.
        captions: (M) captions of the classified chips (a captioning stage, or a head with a captioner).
        errors: (N) read error per chip (``None`` when every chip was read).
        embeddings: (M, E) pooled image features of the classified chips (``map --embeddings``).
    """

    batch: Batch
    rows: np.ndarray
    cols: np.ndarray
    windows: np.ndarray
    valid_fraction: np.ndarray
    classified: np.ndarray
    top_index: np.ndarray
    top_score: np.ndarray
    captions: Sequence[str | None] | None = None
    errors: list[str | None] | None = None
    embeddings: np.ndarray | None = None

    @property
    def failed(self) -> np.ndarray:
        """(N,) True for chips whose window could not be read."""
        if self.errors is None:
            return np.zeros(len(self.rows), dtype=bool)
        return np.array([e is not None for e in self.errors], dtype=bool)

    @property
    def n_classified(self) -> int:
        """Number of chips classified in this batch."""
        return int(self.classified.sum())


def classify_batch(
    read: ReadSpec,
    classifier: ClassifierSpec,
    batch: Batch,
    top_k: int,
    captions: dict[int, str] | None = None,
    with_embeddings: bool = False,
) -> BatchResult:
    """Read a batch of chips from the scene and classify the valid ones.

    Args:
        read: how to read chips (scene path, grid, bands, scaling, nodata).
        classifier: which model and labels to classify with.
        batch: the range of chips.
        top_k: number of best labels to return per chip.
        captions: captions from the captioning stage, by linear chip index.
        with_embeddings: also return the pooled image features of the same pass.

    Returns:
        The batch result.
    """
    chips = batch.chips(read.grid)
    pixels = ChipReader(read).read_batch(chips)
    kept = batch.start + np.flatnonzero(pixels.keep)
    given = [captions.get(int(i)) for i in kept] if captions is not None else None
    embeddings = None
    if with_embeddings:
        probs, texts, features = get_classifier(classifier).classify_with_features(pixels.pixels[pixels.keep], given)
        embeddings = features.numpy()
    else:
        probs, texts = get_classifier(classifier).classify(pixels.pixels[pixels.keep], given)
    k = min(top_k, probs.shape[1])
    top = torch.topk(probs, k, dim=1) if len(probs) else None
    return BatchResult(
        batch=batch,
        rows=np.array([c.row for c in chips], dtype=np.int32),
        cols=np.array([c.col for c in chips], dtype=np.int32),
        windows=read.grid.footprint_windows(chips),
        valid_fraction=pixels.valid_fraction,
        classified=pixels.keep,
        top_index=top.indices.numpy().astype(np.int32) if top is not None else np.zeros((0, k), np.int32),
        top_score=top.values.numpy().astype(np.float32) if top is not None else np.zeros((0, k), np.float32),
        captions=texts if texts is not None else given,  # a head that reads none passes the stage's through
        errors=pixels.errors if any(e is not None for e in pixels.errors) else None,
        embeddings=embeddings,
    )


@dataclass
class CaptionResult:
    """Captions of the chips of a batch worth classifying.

    Attributes:
        batch: the batch.
        chips: (M,) linear indexes of the captioned chips.
        captions: their captions.
    """

    batch: Batch
    chips: np.ndarray
    captions: list[str]


def caption_batch(read: ReadSpec, captioner: CaptionerSpec, device: str, precision: str, batch: Batch) -> CaptionResult:
    """Read a batch of chips and caption the valid ones (the captioning stage).

    Captions describe the chips exactly as the classifier will see them.
    """
    pixels = ChipReader(read).read_batch(batch.chips(read.grid))
    chosen = pixels.keep
    texts = load_captioner(captioner, device, precision).caption(pixels.pixels[chosen]) if chosen.any() else []
    return CaptionResult(batch, batch.start + np.flatnonzero(chosen), texts)

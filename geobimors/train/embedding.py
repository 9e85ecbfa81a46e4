"""Fitting heads on frozen pooled image embeddings (probe, tip): one encoder pass, then seconds of CPU.

The images are encoded once (no augmentation); the fit itself never touches
pixels, so it also runs from stored embeddings. Each head's one regularisation
choice is made on held-out data: the validation images when there are any,
else 3-fold cross-validation on the shots (the probe) or leave-one-out on the
cache (Tip-Adapter). With a single shot per class there is nothing to hold
out: fixed defaults are used, and the training result says so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geobimors.heads.probe import EmbeddingHead, LinearProbeHead, TipAdapterHead
from geobimors.models.clip import ClipModel
from geobimors.progress import Progress
from geobimors.raster.images import Images
from geobimors.train.data import LabelledImages
from geobimors.train.loop import TrainResult

# Strengths of the pull toward the text classifier (per unit squared distance; the loss is a mean over shots).
PROBE_WEIGHT_DECAYS = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
PROBE_DEFAULT_DECAY = 0.1
TIP_ALPHAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
TIP_BETAS = (1.0, 3.0, 5.5, 10.0)
TIP_DEFAULT = (1.0, 5.5)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Small matrices: one thread is tens of times faster than several fighting for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def embed_images(clip: ClipModel, images: Images, batch_size: int = 128, progress_mode: str = "none") -> torch.Tensor:
    """(N, E) L2-normalised pooled embeddings of (N, H, W, 3) uint8 images (files are read one batch at a time)."""
    out = []
    progress = Progress(len(images), progress_mode, desc="embedding images")
    try:
        for start in range(0, len(images), batch_size):
            chips = images[start : start + batch_size]
            out.append(clip.embed_chips(chips).float())
            progress.update(len(chips))
    finally:
        progress.close()
    return torch.cat(out) if out else torch.zeros((0, 0))


def fit_probe_weights(
    features: torch.Tensor,
    targets: torch.Tensor,
    anchor: torch.Tensor,
    scale: float,
    weight_decay: float,
    max_iter: int = 50,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (C, E) and biases (C,) minimising cross-entropy + ``weight_decay * ||W - anchor||^2`` (L-BFGS).

    Args:
        features: (N, E) normalised embeddings.
        targets: (N,) class indexes.
        anchor: (C, E) zero-shot text classifier (the start and the pull).
        scale: logit scale of the CLIP model.
        weight_decay: strength of the pull toward ``anchor``.
        max_iter: L-BFGS iterations.
        start: weights and biases to start from (default: ``anchor`` and zeros).
    """
    features, anchor = features.float(), anchor.float()
    weight = (anchor if start is None else start[0]).clone().float().requires_grad_(True)
    bias = (torch.zeros(anchor.shape[0], device=anchor.device) if start is None else start[1]).clone().float()
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = scale * features @ weight.T + bias
        loss = F.cross_entropy(logits, targets) + weight_decay * (weight - anchor).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == targets).float().mean()) if len(targets) else float("nan")


def _folds(targets: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified fold index of every example (k folds)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(targets), dtype=np.int64)
    for cls in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == cls))
        fold[members] = np.arange(len(members)) % k
    return [np.flatnonzero(fold == i) for i in range(k)]


def _fit_probe(
    head: LinearProbeHead,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor | None,
    val_y: torch.Tensor | None,
    seed: int,
) -> tuple[float, list[dict[str, float]], str]:
    # L-BFGS's line search reads the loss back at every step: on a GPU the host-device round trips
    # dominate so small a problem (measured on an H200: 3-17 s per fit, against under a second on a
    # 2-core CPU), so the probe always fits on the CPU and its weights are copied to the head's device.
    cpu = torch.device("cpu")
    train_x, train_y = train_x.to(cpu), train_y.to(cpu)
    if val_x is not None and val_y is not None:
        val_x, val_y = val_x.to(cpu), val_y.to(cpu)
    scale, anchor = head.clip.logit_scale, head.text_weights.to(cpu)
    history: list[dict[str, float]] = []
    shots = int(torch.bincount(train_y).min()) if len(train_y) else 0
    fitted: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    if val_x is not None and val_y is not None and len(val_y):
        selection = "validation images"
        # From the strongest pull down, each fit starting from the last (warm starts: fewer iterations).
        previous = None
        for decay in sorted(PROBE_WEIGHT_DECAYS, reverse=True):
            w, b = previous = fitted[decay] = fit_probe_weights(train_x, train_y, anchor, scale, decay, start=previous)
            history.append({"weight_decay": decay, "val_accuracy": _accuracy(scale * val_x @ w.T + b, val_y)})
    elif shots >= 2:
        k = min(3, shots)
        selection = f"{k}-fold cross-validation on the shots"
        folds = _folds(train_y.cpu().numpy(), k, seed)
        correct = dict.fromkeys(PROBE_WEIGHT_DECAYS, 0)
        for held in folds:
            rest = np.setdiff1d(np.arange(len(train_y)), held)
            previous = None
            for decay in sorted(PROBE_WEIGHT_DECAYS, reverse=True):
                w, b = previous = fit_probe_weights(train_x[rest], train_y[rest], anchor, scale, decay, start=previous)
                correct[decay] += int(((scale * train_x[held] @ w.T + b).argmax(1) == train_y[held]).sum())
        history = [
            {"weight_decay": d, "val_accuracy": correct[d] / len(train_y)} for d in sorted(correct, reverse=True)
        ]
    else:
        history.append({"weight_decay": PROBE_DEFAULT_DECAY, "val_accuracy": float("nan")})
        selection = "none (one shot per class: default weight decay)"
    # Ties go to the stronger pull toward zero-shot (the safer choice with few shots).
    best = max(history, key=lambda r: (np.nan_to_num(r["val_accuracy"], nan=-1.0), r["weight_decay"]))
    weight, bias = fitted.get(best["weight_decay"]) or fit_probe_weights(
        train_x, train_y, anchor, scale, best["weight_decay"]
    )
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    head.weight_decay = best["weight_decay"]
    return best["val_accuracy"], history, selection


def _fit_tip(
    head: TipAdapterHead,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor | None,
    val_y: torch.Tensor | None,
) -> tuple[float, list[dict[str, float]], str]:
    head.set_cache(train_x, train_y)
    scale = head.clip.logit_scale
    shots = int(torch.bincount(train_y).min()) if len(train_y) else 0
    if val_x is not None and val_y is not None and len(val_y):
        x, y, exclude, selection = val_x, val_y, False, "validation images"
    elif shots >= 2:
        x, y, exclude, selection = train_x, train_y, True, "leave-one-out on the cache"
    else:
        head.alpha.fill_(TIP_DEFAULT[0])
        head.beta.fill_(TIP_DEFAULT[1])
        return float("nan"), [], "none (one shot per class: Tip-Adapter defaults)"
    zero_shot = scale * x @ head.text_weights.T
    history = []
    for beta in TIP_BETAS:
        head.beta.fill_(beta)
        cache = head.cache_logits(x, exclude_self=exclude)
        for alpha in TIP_ALPHAS:
            history.append({"alpha": alpha, "beta": beta, "val_accuracy": _accuracy(zero_shot + alpha * cache, y)})
    # Ties go to the smaller cache weight (closer to zero-shot).
    best = max(history, key=lambda r: (r["val_accuracy"], -r["alpha"]))
    head.alpha.fill_(best["alpha"])
    head.beta.fill_(best["beta"])
    return best["val_accuracy"], history, selection


def fit_embedding_head(
    head: EmbeddingHead,
    train: LabelledImages | tuple[torch.Tensor, np.ndarray],
    val: LabelledImages | tuple[torch.Tensor, np.ndarray] | None = None,
    seed: int = 0,
    progress_mode: str = "none",
    log: Callable[[str], None] | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Fit a probe or Tip-Adapter head on the embeddings of the training images.

    Args:
        head: a new head whose labels are the training classes.
        train: training images, or (embeddings, targets) already computed.
        val: validation images or (embeddings, targets), for the one choice each head makes.
        seed: seed of the cross-validation folds.
        progress_mode: ``bar``, ``jsonl`` or ``none`` (embedding progress).
        log: called with one line about the choice made.

    Returns:
        The result (``seconds``: the whole fit including embedding the images;
        ``history``: the candidates tried with their held-out accuracy), and what
        was chosen how (selection method, choice, embedding and fit seconds).
    """
    # Image files are read here, before the clock starts, as they were when folders loaded eagerly.
    train = train.in_memory() if isinstance(train, LabelledImages) else train
    val = val.in_memory() if isinstance(val, LabelledImages) else val
    start = time.monotonic()
    torch.manual_seed(seed)
    head.eval()
    train_x, train_y = _embedded(head.clip, train, progress_mode)
    val_x, val_y = _embedded(head.clip, val, progress_mode) if val is not None else (None, None)
    embedded = time.monotonic()
    with _one_thread():
        if isinstance(head, LinearProbeHead):
            best, history, selection = _fit_probe(head, train_x, train_y, val_x, val_y, seed)
        elif isinstance(head, TipAdapterHead):
            best, history, selection = _fit_tip(head, train_x, train_y, val_x, val_y)
        else:
            raise TypeError(f"no embedding fit for head {head.kind!r}")
    fitted = time.monotonic()
    result = TrainResult(
        history=history,
        best_epoch=1,
        best_val_accuracy=best,
        seconds=fitted - start,
        trainable_parameters=head.trainable_parameter_count(),
    )
    details: dict[str, Any] = {
        "selection": selection,
        "choice": {k: float(v) for k, v in head.hyperparameters().items()},
        "embed_seconds": embedded - start,
        "fit_seconds": fitted - embedded,
        "examples": len(train_y),
    }
    if log is not None:
        log(
            f"{head.kind}: {len(train_y)} examples embedded in {embedded - start:.2f} s, fitted in "
            f"{fitted - embedded:.2f} s; choice by {selection} (held-out accuracy {best:.4g})"
        )
    return result, details


def _embedded(
    clip: ClipModel, data: LabelledImages | tuple[torch.Tensor, np.ndarray], progress_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, LabelledImages):
        features = embed_images(clip, data.images, progress_mode=progress_mode)
        targets = data.targets
    else:
        features, targets = data
    return features.float().to(clip.device), torch.as_tensor(np.asarray(targets), dtype=torch.long, device=clip.device)

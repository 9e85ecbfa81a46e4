"""Few-shot training of prompt-learning heads on a frozen CLIP.

Paper defaults (BiMoRS, following CoOp/CoCoOp): SGD (momentum 0.9, weight decay
5e-4), learning rate 0.009 with a cosine schedule, one warm-up epoch at a
constant 1e-5, 10 epochs, batch size 4, random resized crops and horizontal
flips. Only head parameters train, in fp32 (autocast speeds up the frozen
towers); the best epoch is chosen on a validation split.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import ChainedScheduler, ConstantLR, CosineAnnealingLR, LRScheduler
from torchvision.transforms import v2

from geobimors.errors import InputError
from geobimors.heads.base import Head
from geobimors.progress import Progress
from geobimors.train.data import LabelledImages
from geobimors.train.evaluate import evaluate

CaptionFn = Callable[[np.ndarray], list[str]]


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters (paper defaults).

    Attributes:
        epochs: training epochs.
        batch_size: images per step.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        warmup_epochs: epochs at the warm-up rate.
        warmup_lr: warm-up learning rate (at most ``lr``).
        crop_scale: area range of random resized crops.
        seed: seed of sampling, augmentation and initialisation.
    """

    epochs: int = 10
    batch_size: int = 4
    lr: float = 0.009
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs and batch size must be at least 1, got {self.epochs} and {self.batch_size}")
        for name in ("lr", "momentum", "weight_decay", "warmup_lr"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise InputError(f"{name} must be a finite number{' above 0' if name == 'lr' else ', 0 or more'}")


@dataclass
class TrainResult:
    """What training did.

    Attributes:
        history: per-epoch loss, train accuracy, validation accuracy, learning rate.
        best_epoch: epoch whose weights were kept (by validation accuracy).
        best_val_accuracy: its validation accuracy.
        seconds: training time.
        trainable_parameters: number of learned parameters.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = float("nan")
    seconds: float = 0.0
    trainable_parameters: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return asdict(self)


def _augment(settings: TrainSettings, size: tuple[int, int]) -> v2.Compose:
    return v2.Compose(
        [v2.RandomResizedCrop(size, scale=settings.crop_scale, antialias=True), v2.RandomHorizontalFlip()]
    )


def _batch_images(head: Head, chips: np.ndarray, transform: v2.Compose | None) -> torch.Tensor:
    clip = head.clip
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).to(clip.device)
    if transform is None:
        return clip.preprocess(chips)
    x = torch.stack([transform(img) for img in x]).float().div_(255.0)
    return clip.normalize(x)


def train_head(
    head: Head,
    train: LabelledImages,
    val: LabelledImages | None = None,
    settings: TrainSettings | None = None,
    captions: CaptionFn | None = None,
    progress_mode: str = "bar",
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a head's parameters; keep the weights of the best validation epoch.

    Args:
        head: a new head whose labels are the training classes.
        train: the training shots.
        val: validation images (best-epoch selection); ``None`` keeps the last epoch.
        settings: hyperparameters.
        captions: captions of chips (BiMoRS with a captioner), computed once per image.
        progress_mode: ``bar``, ``jsonl`` or ``none``.
        log: called with one line per epoch.

    Returns:
        The training history and selection.
    """
    settings = settings or TrainSettings()
    # Every epoch visits every image: read the files once, not once per epoch.
    train = train.in_memory()
    val = val.in_memory() if val is not None else None
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    result = TrainResult(trainable_parameters=sum(p.numel() for p in params))
    optimizer, scheduler = make_optimizer(params, settings)
    caption_features = None
    if head.uses_captions and captions is not None:
        caption_features = head.encode_captions(captions(np.asarray(train.images)))
    transform = _augment(settings, head.clip.image_size)
    best_state: dict[str, torch.Tensor] | None = None
    start = time.monotonic()
    steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
    progress = Progress(steps, progress_mode, desc="training", unit="step")
    try:
        for epoch in range(settings.epochs):
            lr = optimizer.param_groups[0]["lr"]
            order = generator.permutation(len(train))
            loss, correct = _train_epoch(head, train, order, optimizer, transform, caption_features, settings, progress)
            scheduler.step()
            record = {"epoch": epoch + 1, "lr": lr, "loss": loss, "train_accuracy": correct / len(train)}
            if val is not None:
                record["val_accuracy"] = _validate(head, train, val, captions)
                if best_state is None or record["val_accuracy"] > result.best_val_accuracy:
                    result.best_epoch, result.best_val_accuracy = epoch + 1, record["val_accuracy"]
                    best_state = copy.deepcopy(head.state_dict())
            result.history.append(record)
            if log is not None:
                log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    finally:
        progress.close()
    if best_state is not None:
        head.load_state_dict(best_state)
    else:
        result.best_epoch = settings.epochs
    head.eval()
    result.seconds = time.monotonic() - start
    return result


def make_optimizer(
    params: list[torch.nn.Parameter], settings: TrainSettings
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """SGD with the paper's per-epoch schedule: constant warm-up, then cosine decay (as in Dassl).

    The cosine runs over all epochs (epoch ``e`` gets ``lr * (1 + cos(pi * e / epochs)) / 2``) and
    the warm-up epochs replace its first values with ``warmup_lr`` (scaled by the cosine after the first).

    Raises:
        InputError: if ``warmup_lr`` is above ``lr``.
    """
    if settings.warmup_lr > settings.lr:
        raise InputError(f"warmup_lr {settings.warmup_lr:g} is above lr {settings.lr:g}; warm up at a lower rate")
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    schedulers: list[LRScheduler] = [CosineAnnealingLR(optimizer, T_max=settings.epochs)]
    if settings.warmup_epochs > 0:
        warmup = ConstantLR(optimizer, factor=settings.warmup_lr / settings.lr, total_iters=settings.warmup_epochs)
        schedulers.insert(0, warmup)
    return optimizer, ChainedScheduler(schedulers, optimizer=optimizer)


def _train_epoch(
    head: Head,
    train: LabelledImages,
    order: np.ndarray,
    optimizer: torch.optim.Optimizer,
    transform: v2.Compose,
    caption_features: torch.Tensor | None,
    settings: TrainSettings,
    progress: Progress,
) -> tuple[float, int]:
    """One pass over the shots in ``order``; returns the mean loss and the number of correct predictions."""
    head.train()
    losses, correct = [], 0
    for start in range(0, len(train), settings.batch_size):
        index = order[start : start + settings.batch_size]
        images = _batch_images(head, train.images[index], transform)
        targets = torch.from_numpy(train.targets[index]).to(head.clip.device)
        features = caption_features[index] if caption_features is not None else None
        logits = head(images, features).float()
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        correct += int((logits.argmax(1) == targets).sum())
        progress.update(1)
    return float(np.mean(losses)), correct


def _validate(head: Head, train: LabelledImages, val: LabelledImages, captions: CaptionFn | None) -> float:
    """Validation accuracy; the head keeps the training labels."""
    accuracy = evaluate(head, val, captions=captions).accuracy
    if head.labels != train.labels:  # evaluation re-labels the head with the validation classes
        head.set_labels(train.labels)
    return accuracy

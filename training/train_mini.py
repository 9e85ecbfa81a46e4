"""Train geobimors-mini: LiT-style (locked text) on EuroSAT RGB.

The MiniLM text tower stays frozen; the ResNet-10-T image tower learns to
map chips next to the text embeddings of captions of their class. Captions come
from the class names through remote-sensing templates and synonyms. Held-out
paraphrases (``woodland``, ``motorway`` ...) are never seen in training and
measure how well the model reads new label phrasings.

Reproduce the bundled weights (fixed seed; about 40 minutes on 2 CPU cores)::

    .venv/bin/python training/train_mini.py ../shared/data/eurosat_rgb \\
        --out geobimors/models/mini/mini.safetensors --log docs/mini-training-log.json

This script is not part of the installed package: the package keeps what users run
(the model, its config and weights, and the class names in ``geobimors.models.mini.classes``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.labels import Label
from geobimors.models.clip import ClipModel
from geobimors.models.mini import build_mini, trainable_state_dict
from geobimors.models.mini.classes import HELD_OUT_PARAPHRASES, TRAIN_SYNONYMS
from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES

TRAIN_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "a photo of {}.",
    "an image of {}.",
    *REMOTE_SENSING_TEMPLATES,  # the templates geobimors classifies with
    "a sentinel-2 image of {}.",
    "a low resolution satellite image of {}.",
    "{} seen from space.",
    "a patch of {} seen from above.",
)


def load_image_folder(root: Path, limit_per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageFolder tree into (N, H, W, 3) uint8 images, (N,) class indexes, class names."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, targets = [], []
    for index, name in enumerate(classes):
        files = sorted((root / name).glob("*.jpg"))[:limit_per_class]
        for path in files:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
            targets.append(index)
    return torch.from_numpy(np.stack(images)), torch.tensor(targets), classes


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crops (area 0.6-1), rotations, flips, sensor-resolution blur and colour jitter.

    Args:
        images: (N, 3, H, W) float in 0..1.
        generator: random number generator (fixed seed: reproducible runs).
    """
    return colour_jitter(sensor_blur(crop_rotate_flip(images, generator, 0.6), generator, 3.0), generator)


def crop_rotate_flip(images: torch.Tensor, generator: torch.Generator, min_area: float) -> torch.Tensor:
    """Random resized crops (area ``min_area``-1), 90-degree rotations and flips of (N, 3, H, W) floats.

    One batched affine resampling does crop, rotation and flip together.
    """
    n = images.shape[0]
    side = torch.sqrt(min_area + (1 - min_area) * torch.rand(n, generator=generator))  # crop side as a fraction
    shift = (1 - side)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    angle = torch.randint(0, 4, (n,), generator=generator).float() * (math.pi / 2)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * side * flip
    theta[:, 0, 1] = -sin * side
    theta[:, 1, 0] = sin * side * flip
    theta[:, 1, 1] = cos * side
    theta[:, :, 2] = shift
    # Random draws stay on the CPU generator (the same stream on any device); the resampling runs where the images are.
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def sensor_blur(images: torch.Tensor, generator: torch.Generator, max_blur: float) -> torch.Tensor:
    """Coarser sensors: half the images blurred as if imaged at 1-``max_blur`` x the ground distance.

    Each is resampled down and back, as geobimors does with 30 m Landsat chips read at 10 m. In place.
    """
    h, w = images.shape[-2:]
    for i in torch.nonzero(torch.rand(images.shape[0], generator=generator) < 0.5).flatten().tolist():
        factor = 1.0 + (max_blur - 1.0) * torch.rand(1, generator=generator).item()
        size = (max(4, round(h / factor)), max(4, round(w / factor)))
        small = F.interpolate(images[i : i + 1], size=size, mode="area")
        images[i] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
    return images


def colour_jitter(images: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Other sensors and processing chains: per-channel gains and offsets, brightness and contrast.

    At ``strength`` 1: gains ±15%, offsets ±5%, brightness and contrast ±20%; ``strength`` scales every range.
    """
    n = images.shape[0]
    gains = 1 + strength * 0.3 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    offsets = strength * 0.1 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    brightness = 1 + strength * 0.4 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    contrast = 1 + strength * 0.4 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    gains, offsets, brightness, contrast = (t.to(images.device) for t in (gains, offsets, brightness, contrast))
    out = images * gains + offsets
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean * brightness).clamp(0, 1)


@torch.no_grad()
def caption_bank(model: Any, tokenizer: Any, classes: list[str]) -> list[torch.Tensor]:
    """Pooled MiniLM embeddings (before the text projection) of every training caption, per class.

    The text transformer is frozen, so its outputs are computed once.
    """
    bank = []
    for name in classes:
        captions = [t.format(s) for s in TRAIN_SYNONYMS[name] for t in TRAIN_TEMPLATES]
        tokens, attention = unpadded(tokenizer(captions), model.text.config.pad_token_id)
        out = model.text.transformer(input_ids=tokens, attention_mask=attention)
        bank.append(model.text.pooler(out, attention))
    return bank


def unpadded(tokens: torch.Tensor, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids cut to the longest text of the batch, and their attention mask.

    The tokenizer pads every text to the 77-token context; the captions here are 5-20 tokens.
    Padding is masked out of attention and of the mean pooling, so cutting it changes nothing
    but the time (several times less).
    """
    attention = (tokens != pad_token_id).long()
    length = int(attention.sum(1).max())
    return tokens[:, :length], attention[:, :length]


@torch.no_grad()
def zero_shot_accuracy(clip: ClipModel, images: torch.Tensor, targets: torch.Tensor, prompts: list[str]) -> float:
    """Top-1 accuracy of zero-shot classification with geobimors' templates (as ``geobimors map`` does)."""
    head = ZeroShotHead(clip, [Label(p, p) for p in prompts])
    correct = 0
    for start in range(0, len(images), 256):
        x = clip.preprocess(images[start : start + 256])
        correct += int((head.logits(x).argmax(1) == targets[start : start + 256]).sum())
    return correct / len(images)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LRScheduler:
    """Linear warm-up over ``warmup_steps`` (from 1/warmup of the rate), then cosine decay to zero."""
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=max(1, warmup_steps - 1))
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def make_optimizer(
    model: Any, lr: float, weight_decay: float, train_text_projection: bool, initial_logit_scale: float
) -> torch.optim.Optimizer:
    """Unfreeze the image tower and temperature (and the text projection), and return their SGD optimizer."""
    model.visual.to(memory_format=torch.channels_last)  # about 1.5x faster convolutions on CPU
    model.visual.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    projection = model.text.proj
    with torch.no_grad():
        model.logit_scale.fill_(math.log(initial_logit_scale))
        # The text projection starts as the identity: MiniLM's own sentence space.
        projection.weight.copy_(torch.eye(projection.weight.shape[0], projection.weight.shape[1]))
    projection.requires_grad_(train_text_projection)
    groups: list[dict[str, Any]] = [
        {"params": list(model.visual.parameters())},
        {"params": [model.logit_scale], "weight_decay": 0.0},
    ]
    if train_text_projection:
        # A slow, decay-free projection: it may sharpen class directions without leaving MiniLM's space.
        groups.append({"params": list(projection.parameters()), "lr": lr * 0.1, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def contrastive_loss(
    model: Any,
    clip: ClipModel,
    bank: list[torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    captions_per_target: int,
) -> torch.Tensor:
    """Cross-entropy of augmented images against one random caption target per (image, class)."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    x = clip.normalize(augment(x, generator)).contiguous(memory_format=torch.channels_last)
    # Positives and negatives vary every step: each target is the mean of random captions of its class.
    picks = [torch.randint(0, len(c), (len(images), captions_per_target), generator=generator) for c in bank]
    pooled = torch.stack([captions[pick].mean(1) for captions, pick in zip(bank, picks)], dim=1)  # (B, C, D)
    texts = F.normalize(model.text.proj(pooled), dim=-1)
    features = F.normalize(model.encode_image(x), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * torch.einsum("bd,bcd->bc", features, texts)
    return F.cross_entropy(logits, targets)


def train_epoch(
    model: Any,
    clip: ClipModel,
    bank: list[torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    batch_size: int,
    generator: torch.Generator,
    captions_per_target: int,
) -> float:
    """One pass over the training images in a random order; returns the mean loss."""
    images, targets = data
    model.train()
    model.text.eval()  # frozen tower: no dropout
    order = torch.randperm(len(images), generator=generator)
    losses = []
    for step in range(len(images) // batch_size):
        idx = order[step * batch_size : (step + 1) * batch_size]
        loss = contrastive_loss(model, clip, bank, images[idx], targets[idx], generator, captions_per_target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    return float(np.mean(losses))


def train(
    data: Path,
    out: Path,
    log: Path | None,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    limit_per_class: int | None = None,
    train_text_projection: bool = True,
    captions_per_target: int = 4,
    initial_logit_scale: float = 30.0,
) -> dict[str, object]:
    """Train the image tower and save the bundled weights (safetensors)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model: Any
    model, tokenizer, _ = build_mini()
    clip = ClipModel("mini", model, tokenizer, torch.device("cpu"), "fp32")
    train_images, train_targets, classes = load_image_folder(data / "train", limit_per_class)
    val_images, val_targets, val_classes = load_image_folder(data / "val", limit_per_class)
    if not classes == val_classes == sorted(TRAIN_SYNONYMS):
        raise SystemExit(f"{data}: train/ and val/ must hold the EuroSAT class folders {sorted(TRAIN_SYNONYMS)}")
    bank = caption_bank(model, tokenizer, classes)
    prompts = {
        "val_zero_shot_plain": [TRAIN_SYNONYMS[c][0] for c in classes],
        "val_zero_shot_paraphrase": [HELD_OUT_PARAPHRASES[c] for c in classes],
    }

    optimizer = make_optimizer(model, lr, weight_decay, train_text_projection, initial_logit_scale)
    steps_per_epoch = len(train_images) // batch_size
    scheduler = warmup_cosine(optimizer, warmup_steps=steps_per_epoch, total_steps=epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    start = time.time()
    for epoch in range(epochs):
        loss = train_epoch(
            model,
            clip,
            bank,
            (train_images, train_targets),
            optimizer,
            scheduler,
            batch_size,
            generator,
            captions_per_target,
        )
        record = {"epoch": epoch + 1, "loss": loss}
        record |= {key: zero_shot_accuracy(clip, val_images, val_targets, p) for key, p in prompts.items()}
        record |= {"logit_scale": float(model.logit_scale.detach().exp()), "elapsed_s": round(time.time() - start, 1)}
        history.append(record)
        print(json.dumps(record), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state_dict(model), str(out), metadata={"seed": str(seed), "epochs": str(epochs)})
    report: dict[str, object] = {
        "data": str(data),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "train_images": len(train_images),
        "val_images": len(val_images),
        "train_seconds": round(time.time() - start, 1),
        "history": history,
    }
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="EuroSAT RGB folder with train/ and val/ ImageFolder trees")
    parser.add_argument("--out", type=Path, required=True, help="where to write the safetensors weights")
    parser.add_argument("--log", type=Path, default=None, help="JSON training log")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-per-class", type=int, default=None, help="use at most N images per class (smoke runs)")
    args = parser.parse_args()
    train(
        args.data,
        args.out,
        args.log,
        args.epochs,
        args.batch_size,
        args.lr,
        seed=args.seed,
        limit_per_class=args.limit_per_class,
    )


if __name__ == "__main__":
    main()

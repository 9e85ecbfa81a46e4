"""Train geobimors-mini: LiT-style (locked text) on EuroSAT RGB.

The MiniLM text tower stays frozen; the ResNet-10-T image tower learns to
map chips next to the text embeddings of captions of their class. Captions come
from the class names through remote-sensing templates and synonyms. Held-out
paraphrases (``woodland``, ``motorway`` ...) are never seen in training and
measure how well the model reads new label phrasings.

Reproduce the bundled weights (fixed seed; about 40 minutes on 2 CPU cores)::

    python -m geobimors.models.mini.train ../shared/data/eurosat_rgb \\
        --out geobimors/models/mini/mini.safetensors --log docs/mini-training-log.json
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

from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES

# Class folder -> training phrasings (the first is the plain class name used for evaluation).
TRAIN_SYNONYMS: dict[str, list[str]] = {
    "AnnualCrop": ["annual crop land", "annual crops", "cropland", "arable land", "cultivated fields", "crop fields"],
    "Forest": ["forest", "dense forest", "trees", "forested land", "tree cover"],
    "HerbaceousVegetation": [
        "herbaceous vegetation",
        "natural grassland",
        "shrubs and herbs",
        "wild vegetation",
        "herbaceous plants",
    ],
    "Highway": ["highway", "road", "a major road", "expressway", "freeway"],
    "Industrial": ["industrial buildings", "industrial area", "factories", "warehouses", "industrial zone"],
    "Pasture": ["pasture land", "pasture", "grazing land", "meadow for livestock", "grassland for grazing"],
    "PermanentCrop": ["permanent crop land", "permanent crops", "orchards", "vineyards", "plantation"],
    "Residential": ["residential buildings", "residential area", "houses", "housing", "a town"],
    "River": ["river", "a river", "stream", "river channel", "waterway"],
    "SeaLake": ["sea or lake", "sea", "lake", "open water", "body of water"],
}
# Class folder -> the plain class name that evaluations and the examples use.
PLAIN_CLASS_NAMES: dict[str, str] = {folder: names[0] for folder, names in TRAIN_SYNONYMS.items()}
# Never used in training: label phrasings to test generalisation to new wording.
HELD_OUT_PARAPHRASES: dict[str, str] = {
    "AnnualCrop": "agricultural fields",
    "Forest": "woodland",
    "HerbaceousVegetation": "scrubland",
    "Highway": "motorway",
    "Industrial": "manufacturing site",
    "Pasture": "rangeland",
    "PermanentCrop": "olive groves",
    "Residential": "suburban neighbourhood",
    "River": "watercourse",
    "SeaLake": "ocean",
}
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

    One batched affine resampling does crop, rotation and flip together.

    Args:
        images: (N, 3, H, W) float in 0..1.
        generator: random number generator (fixed seed: reproducible runs).
    """
    n = images.shape[0]
    side = torch.sqrt(0.6 + 0.4 * torch.rand(n, generator=generator))  # crop side as a fraction
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
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Coarser sensors: half the images are blurred as if imaged at 1-3x the ground distance
    # (10-30 m) and resampled back, as geobimors does with 30 m Landsat chips.
    h, w = out.shape[-2:]
    for i in torch.nonzero(torch.rand(n, generator=generator) < 0.5).flatten().tolist():
        factor = 1.0 + 2.0 * torch.rand(1, generator=generator).item()
        small = F.interpolate(out[i : i + 1], size=(max(4, round(h / factor)), max(4, round(w / factor))), mode="area")
        out[i] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
    # Other sensors and processing: per-channel gains and offsets, brightness and contrast.
    gains = 1 + 0.3 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    offsets = 0.1 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    brightness = 1 + 0.4 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    contrast = 1 + 0.4 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    out = out * gains + offsets
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
        tokens = tokenizer(captions)
        attention = (tokens != model.text.config.pad_token_id).long()
        out = model.text.transformer(input_ids=tokens, attention_mask=attention)
        bank.append(model.text.pooler(out, attention))
    return bank


@torch.no_grad()
def zero_shot_accuracy(clip: object, images: torch.Tensor, targets: torch.Tensor, prompts: list[str]) -> float:
    """Top-1 accuracy of zero-shot classification with geobimors' templates (as ``geobimors map`` does)."""
    from geobimors.heads.zero_shot import ZeroShotHead
    from geobimors.labels import Label

    head = ZeroShotHead(clip, [Label(p, p) for p in prompts])  # type: ignore[arg-type]
    correct = 0
    for start in range(0, len(images), 256):
        x = clip.preprocess(images[start : start + 256])  # type: ignore[attr-defined]
        correct += int((head.logits(x).argmax(1) == targets[start : start + 256]).sum())
    return correct / len(images)


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
    from geobimors.models.clip import ClipModel
    from geobimors.models.mini import build_mini, trainable_state_dict

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model: Any
    model, tokenizer, _ = build_mini()
    clip = ClipModel("mini", model, tokenizer, torch.device("cpu"), "fp32")
    train_images, train_targets, classes = load_image_folder(data / "train", limit_per_class)
    val_images, val_targets, val_classes = load_image_folder(data / "val", limit_per_class)
    assert classes == val_classes == sorted(TRAIN_SYNONYMS), classes
    bank = caption_bank(model, tokenizer, classes)
    plain = [TRAIN_SYNONYMS[c][0] for c in classes]
    paraphrases = [HELD_OUT_PARAPHRASES[c] for c in classes]

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
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = len(train_images) // batch_size
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, float]] = []
    start = time.time()
    for epoch in range(epochs):
        model.train()
        model.text.eval()  # frozen tower: no dropout
        order = torch.randperm(len(train_images), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = train_images[idx].permute(0, 3, 1, 2).float() / 255.0
            x = clip.normalize(augment(x, generator)).contiguous(memory_format=torch.channels_last)
            y = train_targets[idx]
            # One random caption per (image, class): positives and negatives vary every step.
            pooled = torch.stack(
                [
                    bank[c][torch.randint(0, len(bank[c]), (len(idx), captions_per_target), generator=generator)].mean(
                        1
                    )
                    for c in range(len(classes))
                ],
                dim=1,
            )  # (B, C, D)
            texts = F.normalize(projection(pooled), dim=-1)
            features = F.normalize(model.encode_image(x), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * torch.einsum("bd,bcd->bc", features, texts)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        model.eval()
        record = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "val_zero_shot_plain": zero_shot_accuracy(clip, val_images, val_targets, plain),
            "val_zero_shot_paraphrase": zero_shot_accuracy(clip, val_images, val_targets, paraphrases),
            "logit_scale": float(model.logit_scale.detach().exp()),
            "elapsed_s": round(time.time() - start, 1),
        }
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

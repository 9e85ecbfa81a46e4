"""A larger-input teacher for geobimors-mini: its image tower fine-tuned at 128 px on the aerial sets.

The bundled model reads 64 px chips (its CPU map throughput depends on it), but the aerial sets hold far
more detail: fine-tuned at 128 px input, the same tower scores 0.885 on AID val against 0.817 at 64 px.
Such a tower can teach the 64 px model (``train_mini_joint.py --teacher FILE --teacher-size 128
--distill-sets ucmerced aid``): it sees each student crop undegraded at 128 px.

What is trained: the image tower only, from ``--init`` (the shipped weights), on the UC Merced joint
train split and the AID train split (the data cache's 128 px tensors of ``train_mini_joint.py``; test
splits are never read), half of each batch from each set. The text side is frozen: the phrasing banks
are projected once by the init's text projection, so the teacher's image features stay in the text
space of the weights it starts from. Loss: per-dataset class cross-entropy against the mean of 4 random
phrasings per class, augmentation as ``train_mini_joint.augment`` with the aerial ranges.

Three steps, because the training ran on a lent GPU machine that has neither ``../shared/data`` nor
MiniLM (from the repository root)::

    # 1. here: the training tensors (JPEG q95) and projected phrasing banks, 26 MB
    .venv/bin/python training/train_mini_teacher.py pack ../shared/data --data-cache out/mini-joint/data-cache \\
        --init geobimors/models/mini/mini.safetensors --pack out/teacher/aerial.safetensors
    # 2. on the GPU (250 s on an H200 that five other teacher runs shared; 2 s per step on the 2-core CPU)
    python training/train_mini_teacher.py train --pack out/teacher/aerial.safetensors \\
        --init geobimors/models/mini/mini.safetensors --size 128 --lr 0.05 --steps 1979 --device cuda \\
        --out out/teacher/D.safetensors --log out/teacher/D.json
    # 3. here: val top-1 at the teacher's input size (1 view and the 8-view mean)
    .venv/bin/python training/train_mini_teacher.py evaluate ../shared/data --data-cache out/mini-joint/data-cache \\
        --init geobimors/models/mini/mini.safetensors --size 128 out/teacher/D.safetensors

The published teacher ("D", ``docs/mini-teacher-128-log.json``) was trained by a throw-away copy of this
loop that asked for 3,000 steps and fitted its cosine schedule to its time limit at step 150 (1,979 steps);
``--steps 1979`` runs the same schedule except for steps 100-150 (learning rate within 0.3%), and GPU runs are
not bit-for-bit repeatable (floating-point order).

The weights written are in the bundled format (the init's text projection and temperature beside the
new image tower, rounded through float16, as they were sent back from the GPU).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from train_mini_joint import augment_views, read_square

from geobimors.models.clip import dihedral_views
from geobimors.models.mini import CONFIG_PATH
from geobimors.models.mini.towers import ResNetTower

AERIAL = ("ucmerced", "aid")
FOLDERS = {"ucmerced": "ucmerced", "aid": "aid_subset"}
# The bundled model's input normalisation, from its config (read directly: the device machine has no MiniLM).
_PREPROCESS = json.loads(CONFIG_PATH.read_text())["preprocess_cfg"]
MEAN = torch.tensor(_PREPROCESS["mean"]).view(1, 3, 1, 1)
STD = torch.tensor(_PREPROCESS["std"]).view(1, 3, 1, 1)


def cache_files(data_cache: Path) -> tuple[Path, Path]:
    """The tensors and the JSON of ``train_mini_joint.py``'s data cache (run it once to make them)."""
    tensors, rest = data_cache.with_suffix(".safetensors"), data_cache.with_suffix(".json")
    if not (tensors.is_file() and rest.is_file()):
        raise SystemExit(f"no data cache at {data_cache}: run training/train_mini_joint.py with --data-cache first")
    return tensors, rest


def write_pack(data_cache: Path, init: Path, pack: Path) -> None:
    """Aerial training images as JPEG q95 and phrasing banks projected by the init's text projection."""
    projection = load_file(str(init))["text.proj.weight"]
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(cache_files(data_cache)[0]), "pt") as cache:
        keys = set(cache.keys())
        for name in AERIAL:
            encoded = []
            for image in cache.get_tensor(f"train/{name}/images").numpy():
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, "JPEG", quality=95)
                encoded.append(np.frombuffer(buffer.getvalue(), np.uint8))
            out[f"{name}/jpeg"] = torch.from_numpy(np.concatenate(encoded))
            out[f"{name}/jpeg_len"] = torch.tensor([len(e) for e in encoded])
            out[f"{name}/targets"] = cache.get_tensor(f"train/{name}/targets")
            i = 0
            while f"train/{name}/bank{i}" in keys:
                out[f"{name}/bank{i}"] = (cache.get_tensor(f"train/{name}/bank{i}") @ projection.T).half().contiguous()
                i += 1
    pack.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(pack))


def decode(blob: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 images from concatenated JPEG files."""
    raw, images, at = blob.numpy().tobytes(), [], 0
    for length in lengths.tolist():
        with Image.open(io.BytesIO(raw[at : at + length])) as im:
            images.append(np.asarray(im.convert("RGB")))
        at += length
    return torch.from_numpy(np.stack(images))


def image_tower(weights: dict[str, torch.Tensor]) -> ResNetTower:
    """The mini image tower (plain torch) with the ``visual.*`` tensors of bundled-format weights."""
    tower = ResNetTower("resnet10t", 384, {})
    tower.load_state_dict(
        {
            k.removeprefix("visual."): v.float() if v.is_floating_point() else v
            for k, v in weights.items()
            if k.startswith("visual.")
        }
    )
    return tower


def train(args: argparse.Namespace) -> None:
    """Fine-tune the image tower at ``--size`` px; write bundled-format weights and a JSON log."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    pack = load_file(str(args.pack))
    sets: dict[str, dict[str, Any]] = {}
    for name in AERIAL:
        count = sum(1 for k in pack if k.startswith(f"{name}/bank"))
        sets[name] = {
            "images": decode(pack[f"{name}/jpeg"], pack[f"{name}/jpeg_len"]).to(device),
            "targets": pack[f"{name}/targets"].to(device),
            "bank": [pack[f"{name}/bank{i}"].float().to(device) for i in range(count)],
        }
    init = load_file(str(args.init))
    tower = image_tower(init).to(device).to(memory_format=torch.channels_last)
    scale = float(init["logit_scale"].exp())
    optimizer = torch.optim.SGD(tower.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def rate(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        return 0.5 * (
            1 + math.cos(math.pi * min(1.0, (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)))
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    mean, std, half = MEAN.to(device), STD.to(device), args.batch_size // 2
    log: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    started = time.time()
    tower.train()
    for step in range(args.steps):
        picks, crops = {}, []
        for name in AERIAL:  # each set's picks, then its augmentation: the order of the published run's draws
            picks[name] = torch.randint(0, len(sets[name]["images"]), (half,), generator=generator).to(device)
            crops.append(augment_views(sets[name]["images"][picks[name]], generator, 0.3, 4.0, args.size)[0])
        x = torch.cat(crops)
        features = F.normalize(tower(((x - mean) / std).contiguous(memory_format=torch.channels_last)), dim=-1)
        loss = torch.zeros((), device=device)
        for i, name in enumerate(AERIAL):
            bank = sets[name]["bank"]
            choice = [torch.randint(0, len(c), (half, 4), generator=generator).to(device) for c in bank]
            texts = F.normalize(torch.stack([c[p].mean(1) for c, p in zip(bank, choice)], dim=1), dim=-1)
            logits = scale * torch.einsum("bd,bcd->bc", features[half * i : half * (i + 1)], texts)
            part = F.cross_entropy(logits, sets[name]["targets"][picks[name]])
            sums[name] = sums.get(name, 0.0) + float(part.detach())
            loss = loss + part / len(AERIAL)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % 100 == 0:
            log.append(
                {"step": step + 1, **{k: v / 100 for k, v in sums.items()}, "s": round(time.time() - started, 1)}
            )
            print(json.dumps(log[-1]), flush=True)
            sums = {}
    trained = {f"visual.{k}": v.detach().cpu() for k, v in tower.state_dict().items()}
    # Rounded through float16, as the published teacher was sent back from the GPU machine.
    weights = {
        k: (trained[k].half().float() if trained[k].is_floating_point() else trained[k]) if k in trained else v
        for k, v in init.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(args.out))
    report = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "command"}
    report |= {"seconds": round(time.time() - started, 1), "history": log}
    report["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.log is not None:
        args.log.write_text(json.dumps(report, indent=1) + "\n")


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Val top-1 (UC Merced joint val, AID val) of each weights file at ``--size``: one view and 8 views.

    Val images are read from the original files and resized to ``--size`` (bilinear, antialiased); the
    class texts are geobimors' ten templates over the readable names, as ``train_mini_joint.evaluate``.
    """
    torch.set_num_threads(args.threads)
    projection = load_file(str(args.init))["text.proj.weight"]
    tensors_file, rest_file = cache_files(args.data_cache)
    meta = json.loads(rest_file.read_text())["sets"]["evals"]
    results: dict[str, dict[str, float]] = {}
    inputs, texts, targets = {}, {}, {}
    with safe_open(str(tensors_file), "pt") as cache:
        for name in AERIAL:
            targets[name] = cache.get_tensor(f"evals/{name}/targets")
            per_template = F.normalize(cache.get_tensor(f"evals/{name}/pooled") @ projection.T, dim=-1)
            classes = len(meta[name]["classes"])
            texts[name] = F.normalize(per_template.view(classes, -1, per_template.shape[-1]).mean(1), dim=-1)
            source = 256 if name == "ucmerced" else None
            images = np.stack([read_square(args.data / FOLDERS[name] / p, source) for p in meta[name]["paths"]])
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", antialias=True, align_corners=False)
            inputs[name] = (x - MEAN) / STD
    for weights in args.weights:
        tower = image_tower(load_file(str(weights))).eval()
        record: dict[str, float] = {}
        for name in AERIAL:
            views = [
                torch.cat([F.normalize(tower(v[s : s + 200]), dim=-1) for s in range(0, len(v), 200)])
                for v in dihedral_views(inputs[name], 8)
            ]
            one = (views[0] @ texts[name].T).argmax(1)
            eight = (F.normalize(torch.stack(views).mean(0), dim=-1) @ texts[name].T).argmax(1)
            record[f"val_{name}"] = float((one == targets[name]).float().mean())
            record[f"val_{name}_tta8"] = float((eight == targets[name]).float().mean())
        results[str(weights)] = record
        print(json.dumps({"weights": str(weights), "size": args.size, **record}), flush=True)
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="write the training pack from train_mini_joint.py's data cache")
    pack.add_argument("data", type=Path, help="the shared data folder the cache was made from")
    pack.add_argument("--data-cache", type=Path, required=True)
    pack.add_argument("--init", type=Path, required=True, help="bundled-format weights (their text projection)")
    pack.add_argument("--pack", type=Path, required=True)
    run = commands.add_parser("train", help="fine-tune the image tower at --size px")
    run.add_argument("--pack", type=Path, required=True)
    run.add_argument("--init", type=Path, required=True)
    run.add_argument("--size", type=int, default=128)
    run.add_argument("--lr", type=float, default=0.05)
    run.add_argument("--steps", type=int, default=1979)
    run.add_argument("--warmup-steps", type=int, default=100)
    run.add_argument("--batch-size", type=int, default=128, help="half from each aerial set")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--device", default="cpu")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--log", type=Path, default=None)
    score = commands.add_parser("evaluate", help="val top-1 of weights at --size px")
    score.add_argument("data", type=Path)
    score.add_argument("weights", type=Path, nargs="+")
    score.add_argument("--data-cache", type=Path, required=True)
    score.add_argument("--init", type=Path, required=True, help="weights whose text projection scores the classes")
    score.add_argument("--size", type=int, default=128)
    score.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.command == "pack":
        write_pack(args.data_cache, args.init, args.pack)
    elif args.command == "train":
        train(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()

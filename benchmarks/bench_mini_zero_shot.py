"""Zero-shot top-1 per dataset and UCM-Captions retrieval of the bundled mini model (issues 14, 15).

Splits (never trained or selected on): EuroSAT ``val/`` (4,050 chips; no test split is
shared), UC Merced ``test`` of ``benchmarks/splits/ucmerced.json`` (420), AID subset ``test`` of
``benchmarks/splits/aid.json`` (600); prompts are the readable class names
(:mod:`geobimors.class_names`) through geobimors' ten remote-sensing templates, as ``geobimors
map`` classifies. Retrieval: UCM-Captions ``test`` (210 images x 5 captions), R@1/5/10 both ways
and mR, the protocol of ``geobimors evaluate --task retrieval``.

    .venv/bin/python benchmarks/bench_mini_zero_shot.py                     # the bundled weights
    .venv/bin/python benchmarks/bench_mini_zero_shot.py --weights OLD.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.models.clip import ClipModel, load_model
from geobimors.raster.images import read_rgb
from geobimors.train.data import LabelledImages, load_image_folder, load_image_list
from geobimors.train.retrieval import load_caption_set, retrieval_recalls

from common import ROOT, run_record

SHARED = ROOT.parent / "shared" / "data"
SPLITS = ROOT / "benchmarks" / "splits"
OUT = ROOT / "docs" / "benchmarks" / "mini-zero-shot.json"


def load_clip(weights: Path | None) -> ClipModel:
    """The bundled mini model, or its architecture with other weights (e.g. the previous release's)."""
    if weights is None:
        return load_model("mini", "cpu")
    from safetensors.torch import load_file

    from geobimors.models.mini import build_mini

    model, tokenizer, _ = build_mini()
    model.load_state_dict(load_file(str(weights)), strict=False)
    model.eval()
    return ClipModel("mini", model, tokenizer, torch.device("cpu"), "fp32")


@torch.no_grad()
def top1(clip: ClipModel, data: LabelledImages) -> float:
    """Zero-shot top-1 with the readable class names through the ten remote-sensing templates."""
    head = ZeroShotHead(clip, data.labels)
    correct = 0
    for start in range(0, len(data.images), 256):
        features = clip.encode_images(clip.preprocess(np.ascontiguousarray(data.images[start : start + 256])))
        predicted = head.logits_from_embeddings(features).argmax(1).numpy()
        correct += int((predicted == data.targets[start : start + 256]).sum())
    return correct / len(data.images)


@torch.no_grad()
def retrieval(clip: ClipModel) -> dict[str, Any]:
    """UCM-Captions test retrieval, as ``geobimors evaluate --task retrieval`` measures it."""
    data = load_caption_set(SHARED / "captions" / "ucm_captions.jsonl", "test")
    chips = np.stack([read_rgb(p, (256, 256)) for p in data.images])
    images = torch.cat([clip.encode_images(clip.preprocess(chips[s : s + 64])) for s in range(0, len(chips), 64)])
    texts = clip.encode_texts(data.texts)
    return {"n_images": len(data.images), **retrieval_recalls((images @ texts.T).numpy(), data.text_image)}


def main() -> None:
    """Measure and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="mini weights file (default: the bundled one)")
    parser.add_argument("--json", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip(args.weights)
    started = time.monotonic()
    report: dict[str, Any] = {
        **run_record("bench_mini_zero_shot.py"),
        "weights": str(args.weights or "bundled geobimors/models/mini/mini.safetensors"),
        "fingerprint": clip.fingerprint,
        "prompts": "readable class names (geobimors.class_names) x geobimors' 10 remote-sensing templates",
    }
    datasets = {
        "eurosat": (load_image_folder(SHARED / "eurosat_rgb" / "val"), "val/ (as shipped; no test split)", 10),
    }
    for name, folder in (("ucmerced", "ucmerced"), ("aid", "aid_subset")):
        record = json.loads((SPLITS / f"{name}.json").read_text())
        data = load_image_list(SHARED / folder, record["splits"]["test"])
        split = f"test of benchmarks/splits/{name}.json (split seed {record['seed']})"
        datasets[name] = (data, split, len(data.labels))
    for name, (data, split, classes) in datasets.items():
        report[name] = {"split": split, "images": len(data.images), "classes": classes, "top1": top1(clip, data)}
        print(name, report[name], flush=True)
    report["ucm_captions_retrieval"] = {"split": "test (UCM-Captions' own split)", **retrieval(clip)}
    print("retrieval", report["ucm_captions_retrieval"], flush=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Retrieval quality of `geobimors search` on real images: class-level text-to-chip retrieval.

Every class prompt is a text query (the prompt-template ensemble `geobimors search` uses); the
images of that class are the relevant ones. The images are embedded directly with the model
(as `geobimors embed` embeds chips: resized to the model input, L2-normalised, stored as float16),
then ranked exactly as the store's exact search ranks them (cosine similarity).

Caption blending (`--caption-weight`) is measured on UC Merced with its human captions
(UCM-Captions, first caption of each image, MiniLM caption embeddings as `embed --captions`
stores them): the weight is chosen on the val split, the figure reported on the test split.

    .venv/bin/python benchmarks/bench_retrieval.py     # -> docs/benchmarks/retrieval.json
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geobimors.embeddings.search import text_queries
from geobimors.labels import camel_to_words
from geobimors.models.caption_encoder import load_caption_encoder
from geobimors.models.clip import load_model
from geobimors.models.mini.classes import PLAIN_CLASS_NAMES
from geobimors.train.data import load_image_folder
from geobimors.train.retrieval import class_retrieval_metrics

from common import ROOT, machine

DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "benchmarks" / "retrieval.json"
MODEL = "mini"
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)

# UC Merced folder names run words together: readable class names for the prompts.
UCM_NAMES = {
    "agricultural": "agricultural land",
    "airplane": "airplanes at an airport",
    "baseballdiamond": "baseball diamond",
    "beach": "beach",
    "buildings": "buildings",
    "chaparral": "chaparral shrubland",
    "denseresidential": "dense residential area",
    "forest": "forest",
    "freeway": "freeway",
    "golfcourse": "golf course",
    "harbor": "harbor with boats",
    "intersection": "road intersection",
    "mediumresidential": "medium density residential area",
    "mobilehomepark": "mobile home park",
    "overpass": "highway overpass",
    "parkinglot": "parking lot",
    "river": "river",
    "runway": "airport runway",
    "sparseresidential": "sparse residential area",
    "storagetanks": "storage tanks",
    "tenniscourt": "tennis court",
}


def aid_name(folder: str) -> str:
    """AID folders are CamelCase (DenseResidential -> dense residential area)."""
    words = camel_to_words(folder)
    return words + " area" if words.endswith("residential") else words


def embed(clip: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out.append(clip.encode_images(clip.preprocess(np.ascontiguousarray(images[start : start + batch]))).numpy())
    # The store keeps float16 by default: rank what search would rank.
    return np.concatenate(out).astype(np.float16).astype(np.float32)


def class_retrieval(name: str, root: Path, names: Callable[[str], str]) -> dict[str, Any]:
    clip = load_model(MODEL, "cpu")
    start = time.perf_counter()
    data = load_image_folder(root)
    folders = [Path(s).parent.name for s in data.sources]
    classes = sorted(set(folders))
    prompts = [names(c) for c in classes]
    images = embed(clip, data.images)
    queries = np.stack([q.vector for q in text_queries(clip, prompts)])
    report = class_retrieval_metrics(queries @ images.T, data.targets, prompts)
    report.update({"dataset": name, "path": str(root.relative_to(ROOT.parent)), "model": MODEL})
    report["seconds"] = time.perf_counter() - start
    print(name, {k: round(v, 4) for k, v in report.items() if k.startswith(("mAP", "R@", "P@"))}, flush=True)
    return report


def caption_blending() -> dict[str, Any]:
    """mAP of text-to-chip retrieval on UCM with caption similarity blended in, by weight."""
    clip = load_model(MODEL, "cpu")
    captions_file = DATA / "captions" / "ucm_captions.jsonl"
    rows = [json.loads(line) for line in captions_file.read_text().splitlines() if line.strip()]
    data = load_image_folder(DATA / "ucmerced")
    index = {str(Path(s).resolve()): i for i, s in enumerate(data.sources)}
    classes = sorted({Path(s).parent.name for s in data.sources})
    prompts = [UCM_NAMES[c] for c in classes]
    images = embed(clip, data.images)
    queries = np.stack([q.vector for q in text_queries(clip, prompts)])
    encoder = load_caption_encoder("minilm", torch.device("cpu"))

    def unit(x: torch.Tensor) -> np.ndarray:
        v = x.numpy()
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)

    query_captions = unit(encoder.encode(prompts))
    out: dict[str, Any] = {"dataset": "UC Merced, UCM-Captions splits", "caption": "first human caption"}
    by_split: dict[str, dict[float, float]] = {}
    for split in ("val", "test"):
        members = [
            (index[str((captions_file.parent / r["image"]).resolve())], r["captions"][0])
            for r in rows
            if r["split"] == split
        ]
        ids = np.array([m[0] for m in members])
        caption_vectors = unit(encoder.encode([m[1] for m in members]))
        image_scores = queries @ images[ids].T
        caption_scores = query_captions @ caption_vectors.T
        by_split[split] = {}
        for w in WEIGHTS:
            scores = (1 - w) * image_scores + w * caption_scores
            by_split[split][w] = class_retrieval_metrics(scores, data.targets[ids], prompts)["mAP"]
        out[split] = {"n_images": len(ids), "mAP_by_weight": {str(w): m for w, m in by_split[split].items()}}
    best = max(WEIGHTS, key=lambda w: by_split["val"][w])
    out["chosen_weight_on_val"] = best
    out["test_mAP_image_only"] = by_split["test"][0.0]
    out["test_mAP_chosen_weight"] = by_split["test"][best]
    print("caption blending", json.dumps(out), flush=True)
    return out


def main() -> None:
    torch.manual_seed(0)
    report: dict[str, Any] = {"machine": {**machine(), "note": "2-core AMD EPYC shared with other jobs, no GPU"}}
    report["eurosat_val"] = class_retrieval(
        "EuroSAT RGB val", DATA / "eurosat_rgb" / "val", PLAIN_CLASS_NAMES.__getitem__
    )
    report["ucmerced"] = class_retrieval("UC Merced", DATA / "ucmerced", UCM_NAMES.__getitem__)
    report["aid_subset"] = class_retrieval("AID subset", DATA / "aid_subset", aid_name)
    report["caption_blending_ucm"] = caption_blending()
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

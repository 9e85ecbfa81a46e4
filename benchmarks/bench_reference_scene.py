"""Map-level accuracy on the reference-labelled EuroSAT mosaic, and scene context (issue 14, sections 3 and 4).

    python benchmarks/bench_reference_scene.py     # -> docs/benchmarks/reference_scene.json

1. Builds the mosaics (``benchmarks/make_reference_scene.py``) if missing.
2. ``geobimors map`` of the val mosaic with the bundled mini model, zero-shot,
   scored by ``geobimors assess`` against its label raster.
3. Heads trained from the *train* mosaic's region polygons (every chip they cover,
   purity 0.75; ``--head probe`` and ``tip``), mapped over the val mosaic and scored.
4. Scene context: transductive refinement of the val mosaic's zero-shot
   probabilities (:mod:`geobimors.train.transductive`): the Gaussian-mixture
   term alone, the spatial-neighbour term alone, and both. Weights are chosen on
   the *train* mosaic (another layout, other chips) and reported on the val
   mosaic; the Gaussian-mixture term is also run on the UC Merced and AID test
   splits and 100 EuroSAT val chips per class, each taken as one "scene".
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import numpy as np
import rasterio
import torch

import geobimors
from geobimors.class_names import EUROSAT
from geobimors.heads.checkpoint import read_metadata
from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.labels import Label
from geobimors.models.clip import load_model
from geobimors.train.api import train
from geobimors.train.data import load_image_folder, load_image_list
from geobimors.train.embedding import embed_images
from geobimors.train.transductive import grid_neighbours, refine

from common import ROOT, machine

SCENES = ROOT / "benchmarks" / "data" / "reference"
OUT = ROOT / "benchmarks" / "out" / "reference"
SHARED = ROOT.parent / "shared" / "data"
GMM_WEIGHTS = (0.5, 1.0, 2.0)
SPATIAL_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0)


def _summary(assessment: Any) -> dict[str, Any]:
    report = assessment.to_dict()
    keep = ("chips_scored", "overall_accuracy", "kappa", "majority_baseline_accuracy", "macro_f1", "mean_purity")
    return {k: report[k] for k in keep}


def _mosaic_chips(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chips (aligned 64 px cells), their true class index, grid rows and cols."""
    with rasterio.open(SCENES / f"{name}-scene.tif") as ds:
        image = ds.read().transpose(1, 2, 0)
    with rasterio.open(SCENES / f"{name}-labels.tif") as ds:
        labels = ds.read(1)
    cells = image.shape[0] // 64
    rows, cols = np.divmod(np.arange(cells * cells), cells)
    chips = np.stack([image[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] for r, c in zip(rows, cols)])
    return chips, np.array([labels[r * 64, c * 64] - 1 for r, c in zip(rows, cols)]), rows, cols


def _accuracy(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    return float((probabilities.argmax(1) == targets).float().mean())


def scene_context(clip: Any) -> dict[str, Any]:
    """Transductive refinement: weights chosen on the train mosaic, figures on the val mosaic and test splits."""
    names = [EUROSAT[f] for f in sorted(EUROSAT)]
    zero_shot = ZeroShotHead(clip, [Label(n, n) for n in names])
    mosaics = {}
    for name in ("train", "val"):
        chips, truth, rows, cols = _mosaic_chips(name)
        features = embed_images(clip, chips)
        logits = clip.logit_scale * features @ zero_shot.class_features.T
        mosaics[name] = (features, logits, torch.as_tensor(truth), grid_neighbours(rows, cols))
    variants: dict[str, dict[str, float]] = {}
    for name, (features, logits, truth, neighbours) in mosaics.items():
        scores = {"zero-shot": _accuracy(logits, truth)}
        for w in GMM_WEIGHTS:
            scores[f"gmm {w}"] = _accuracy(refine(features, logits, likelihood_weight=w), truth)
        for s in SPATIAL_WEIGHTS:
            scores[f"spatial {s}"] = _accuracy(
                refine(features, logits, likelihood_weight=0.0, neighbours=neighbours, spatial_weight=s), truth
            )
            scores[f"gmm 1.0 + spatial {s}"] = _accuracy(
                refine(features, logits, neighbours=neighbours, spatial_weight=s), truth
            )
        variants[name] = scores
    chosen = choose(variants["train"])
    datasets: dict[str, dict[str, float]] = {}
    for name, folder in (("ucmerced", "ucmerced"), ("aid", "aid_subset")):
        record = json.loads((ROOT / "benchmarks" / "splits" / f"{name}.json").read_text())
        datasets[name] = _gmm_scores(clip, load_image_list(SHARED / folder, record["splits"]["test"]))
    datasets["eurosat_val_100_per_class"] = _gmm_scores(clip, load_image_folder(SHARED / "eurosat_rgb" / "val", 100, 0))
    return {
        "mosaics": variants,
        "chosen_on_train_mosaic": chosen,
        "val_mosaic_with_chosen": {family: variants["val"][key] for family, key in chosen.items()},
        "gmm_on_test_splits": datasets,
    }


def choose(scores: dict[str, float]) -> dict[str, str]:
    """Per family (Gaussian mixture alone, spatial alone, both), the variant best on these scores."""
    families = {
        "gmm": lambda k: k.startswith("gmm ") and "spatial" not in k,
        "spatial": lambda k: k.startswith("spatial "),
        "gmm + spatial": lambda k: k.startswith("gmm 1.0 + spatial "),
    }
    return {family: max((k for k in scores if match(k)), key=lambda k: scores[k]) for family, match in families.items()}


def _gmm_scores(clip: Any, data: Any) -> dict[str, float]:
    features = embed_images(clip, data.images)
    logits = clip.logit_scale * features @ ZeroShotHead(clip, data.labels).class_features.T
    targets = torch.as_tensor(data.targets)
    scores = {"zero-shot": _accuracy(logits, targets)}
    for w in GMM_WEIGHTS:
        scores[f"gmm {w}"] = _accuracy(refine(features, logits, likelihood_weight=w), targets)
    return scores


def main() -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    if not (SCENES / "val-scene.tif").exists():
        sys.argv = [sys.argv[0]]
        from make_reference_scene import main as build

        build()
    OUT.mkdir(parents=True, exist_ok=True)
    mapping = SCENES / "mapping.csv"
    report: dict[str, Any] = {"machine": machine(), "command": "python benchmarks/bench_reference_scene.py"}
    zero_map = OUT / "val-zero-shot.gpkg"
    geobimors.map_to_gpkg(
        str(SCENES / "val-scene.tif"), SCENES / "labels.txt", zero_map, overwrite=True, device="cpu", progress="none"
    )
    report["zero_shot_mini"] = _summary(geobimors.assess(zero_map, SCENES / "val-labels.tif", mapping=mapping))
    for kind in ("probe", "tip"):
        head_path = OUT / f"{kind}-from-polygons.safetensors"
        _, result = train(  # geobimors.train is shadowed by the geobimors.train package once imported
            SCENES / "train-regions.gpkg",
            head_path,
            head=kind,
            scene=str(SCENES / "train-scene.tif"),
            label_column="label",
            overwrite=True,
            device="cpu",
            progress="none",
        )
        mapped = OUT / f"val-{kind}.gpkg"
        geobimors.map_to_gpkg(
            str(SCENES / "val-scene.tif"),
            [],
            mapped,
            head=str(head_path),
            overwrite=True,
            device="cpu",
            progress="none",
        )
        report[f"{kind}_from_train_polygons"] = {
            **_summary(geobimors.assess(mapped, SCENES / "val-labels.tif", mapping=mapping)),
            "training_chips": read_metadata(head_path)["training"]["examples"],
            "validation_chips": read_metadata(head_path)["training"]["validation_examples"],
            "train_seconds": result.seconds,
        }
    report["scene_context"] = scene_context(load_model("mini", device="cpu"))
    out = ROOT / "docs" / "benchmarks" / "reference_scene.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

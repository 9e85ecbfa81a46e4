"""Label anchoring (:mod:`geobimors.models.anchors`): zero-shot with the class names people map, not the trained ones.

The bundled model reads the phrasings its text projection was trained on well, and other wording
poorly. This measures zero-shot top-1 when the labels are written as land-cover legends and
paraphrases rather than as the training class names, with and without anchoring, and chooses
the anchoring constants:

- **selection** (the constants with the best mean are chosen): EuroSAT val under three label sets
  (``HELD_OUT_PARAPHRASES``, a Dynamic World and a CORINE legend), UC Merced val and AID val under
  their plain names and under paraphrases written for this benchmark;
- **report** (never chosen on): EuroSAT val under two other legends (ESA WorldCover, NLCD), UC Merced
  test and AID test under the plain names and the paraphrases.

A legend class may cover several EuroSAT classes (WorldCover "built-up": highway, industrial,
residential): a chip is right when its predicted legend class covers its EuroSAT class. Legend
classes that cover none (wetlands, snow) stay in the label set, as they would in a user's legend,
and every chip predicted as one is wrong. EuroSAT has no test split: its val split also chose the
model's epoch, so its rows are selection figures, with held-out wording.

    .venv/bin/python benchmarks/bench_label_anchors.py          # -> docs/benchmarks/label-anchors.json

Leave-one-dataset-out (``--leave-out NAME --weights FILE``: weights trained without that dataset,
``training/train_mini_joint.py --leave-out NAME``): zero-shot on the left-out dataset's evaluation split
with its own class names, read as written and anchored. The model's vocabulary is then the phrasings of
the datasets it was trained on only, and the constants are the shipped ones and the ones the grid above
chooses without the left-out dataset's selection sets.

    .venv/bin/python benchmarks/bench_label_anchors.py --leave-out eurosat --weights W.safetensors \
        --json docs/benchmarks/label-anchors-lodo-eurosat.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_tta import classification_sets

from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.labels import Label
from geobimors.models.anchors import DEFAULT_ANCHORS, AnchorSettings
from geobimors.models.clip import load_model
from geobimors.models.mini.classes import AID_SYNONYMS, HELD_OUT_PARAPHRASES, TRAIN_SYNONYMS, UC_MERCED_SYNONYMS
from geobimors.train.data import LabelledImages
from geobimors.train.embedding import embed_images

from bench_mini_zero_shot import load_clip
from common import ROOT, run_record, write_report

OUT = ROOT / "docs" / "benchmarks" / "label-anchors.json"
STRENGTHS = (0.5, 0.7, 0.9, 1.0)
TEMPERATURES = (0.1, 0.2)
GATES = (0.0, 0.4)

# Legend class -> the EuroSAT class folders it covers (empty: none of them).
LEGENDS: dict[str, dict[str, list[str]]] = {
    "dynamic world": {
        "water": ["River", "SeaLake"], "trees": ["Forest"], "grass": ["Pasture", "HerbaceousVegetation"],
        "flooded vegetation": [], "crops": ["AnnualCrop", "PermanentCrop"],
        "shrub and scrub": ["HerbaceousVegetation"], "built area": ["Highway", "Industrial", "Residential"],
        "bare ground": [], "snow and ice": [],
    },
    "corine": {
        "continuous urban fabric": ["Residential"], "discontinuous urban fabric": ["Residential"],
        "industrial or commercial units": ["Industrial"], "road and rail networks and associated land": ["Highway"],
        "non-irrigated arable land": ["AnnualCrop"], "vineyards": ["PermanentCrop"],
        "fruit trees and berry plantations": ["PermanentCrop"], "olive groves": ["PermanentCrop"],
        "permanent crops": ["PermanentCrop"], "pastures": ["Pasture"], "broad-leaved forest": ["Forest"],
        "coniferous forest": ["Forest"], "mixed forest": ["Forest"],
        "natural grasslands": ["HerbaceousVegetation", "Pasture"],
        "transitional woodland-shrub": ["HerbaceousVegetation", "Forest"],
        "sparsely vegetated areas": ["HerbaceousVegetation"], "bare rocks": [], "water courses": ["River"],
        "water bodies": ["SeaLake"], "sea and ocean": ["SeaLake"],
    },
    "worldcover": {
        "tree cover": ["Forest"], "shrubland": ["HerbaceousVegetation"],
        "grassland": ["Pasture", "HerbaceousVegetation"], "cropland": ["AnnualCrop", "PermanentCrop"],
        "built-up": ["Highway", "Industrial", "Residential"], "bare / sparse vegetation": [], "snow and ice": [],
        "permanent water bodies": ["River", "SeaLake"], "herbaceous wetland": [], "mangroves": [],
        "moss and lichen": [],
    },
    "nlcd": {
        "open water": ["River", "SeaLake"], "perennial ice/snow": [],
        "developed, open space": ["Residential", "Highway"], "developed, low intensity": ["Residential", "Highway"],
        "developed, medium intensity": ["Residential", "Highway", "Industrial"],
        "developed, high intensity": ["Industrial", "Residential", "Highway"], "barren land": [],
        "deciduous forest": ["Forest"], "evergreen forest": ["Forest"], "mixed forest": ["Forest"],
        "shrub/scrub": ["HerbaceousVegetation"], "grassland/herbaceous": ["HerbaceousVegetation", "Pasture"],
        "pasture/hay": ["Pasture"], "cultivated crops": ["AnnualCrop", "PermanentCrop"], "woody wetlands": [],
        "emergent herbaceous wetlands": [],
    },
}  # fmt: skip
# Class folder -> a paraphrase that is none of the training phrasings (written for this benchmark).
UC_MERCED_PARAPHRASES = {
    "agricultural": "farm plots", "airplane": "jets at an airfield", "baseballdiamond": "softball field",
    "beach": "seaside sand", "buildings": "commercial buildings", "chaparral": "scrubland",
    "denseresidential": "high-density housing", "forest": "woodland", "freeway": "interstate highway",
    "golfcourse": "golf links", "harbor": "yacht basin", "intersection": "road junction",
    "mediumresidential": "suburb", "mobilehomepark": "manufactured housing community",
    "overpass": "grade-separated crossing", "parkinglot": "car parking", "river": "watercourse",
    "runway": "landing strip", "sparseresidential": "low-density housing", "storagetanks": "fuel depot",
    "tenniscourt": "tennis facility",
}  # fmt: skip
AID_PARAPHRASES = {
    "Airport": "airfield", "BareLand": "bare ground", "BaseballField": "softball field", "Beach": "seaside",
    "Bridge": "river crossing", "Center": "urban core", "Church": "place of worship", "Commercial": "retail district",
    "DenseResidential": "high-density housing", "Desert": "sand sea", "Farmland": "cultivated land",
    "Forest": "woodland", "Industrial": "manufacturing site", "Meadow": "grass field", "MediumResidential": "suburb",
    "Mountain": "highlands", "Park": "urban green space", "Parking": "car parking", "Playground": "running track",
    "Pond": "small reservoir", "Port": "container terminal", "RailwayStation": "rail terminal",
    "Resort": "hotel complex", "River": "watercourse", "School": "schoolyard",
    "SparseResidential": "low-density housing", "Square": "piazza", "Stadium": "sports venue",
    "StorageTanks": "fuel depot", "Viaduct": "elevated highway",
}  # fmt: skip
SELECTION = (
    "eurosat val / paraphrases", "eurosat val / dynamic world", "eurosat val / corine",
    "ucmerced val / plain", "ucmerced val / paraphrases", "aid val / plain", "aid val / paraphrases",
)  # fmt: skip
REPORT = (
    "eurosat val / plain", "eurosat val / worldcover", "eurosat val / nlcd",
    "ucmerced test / plain", "ucmerced test / paraphrases", "aid test / plain", "aid test / paraphrases",
)  # fmt: skip


def folders(data: LabelledImages) -> list[str]:
    """The class folder of each class index (from the image paths)."""
    by_class = {int(t): Path(source).parent.name for source, t in zip(data.sources, data.targets)}
    return [by_class[i] for i in range(len(data.labels))]


def label_sets(name: str, data: LabelledImages) -> dict[str, tuple[list[str], np.ndarray]]:
    """Label set name -> (labels, (classes x labels) bool: which label is right for which class)."""
    classes = folders(data)
    out: dict[str, tuple[list[str], np.ndarray]] = {
        "plain": ([label.prompt for label in data.labels], np.eye(len(classes), dtype=bool))
    }
    if name.startswith("eurosat"):
        out["paraphrases"] = ([HELD_OUT_PARAPHRASES[c] for c in classes], np.eye(len(classes), dtype=bool))
        for legend, covers in LEGENDS.items():
            labels = list(covers)
            out[legend] = (labels, np.array([[c in covers[label] for label in labels] for c in classes]))
    else:
        paraphrases = UC_MERCED_PARAPHRASES if name.startswith("ucmerced") else AID_PARAPHRASES
        out["paraphrases"] = ([paraphrases[c] for c in classes], np.eye(len(classes), dtype=bool))
    return out


def top1(clip: Any, features: torch.Tensor, targets: np.ndarray, labels: list[str], right: np.ndarray,
         anchors: AnchorSettings | None) -> float:  # fmt: skip
    """Share of images whose best label is right for their class."""
    head = ZeroShotHead(clip, [Label(text, text) for text in labels], anchors=anchors)
    predicted = head.logits_from_embeddings(features).argmax(1).numpy()
    return float(right[targets, predicted].mean())


def leave_one_out(name: str, weights: Path, out: Path) -> None:
    """Zero-shot on a left-out dataset, as written and anchored to the other datasets' phrasings."""
    started = time.time()
    clip = load_clip(weights)
    trained = {"eurosat": TRAIN_SYNONYMS, "ucmerced": UC_MERCED_SYNONYMS, "aid": AID_SYNONYMS}
    clip.trained_vocabulary = [group for other, groups in trained.items() if other != name for group in groups.values()]
    split = "eurosat val" if name == "eurosat" else f"{name} test"
    data = classification_sets()[split]
    features = embed_images(clip, data.images)
    labels, right = label_sets(split, data)["plain"]
    grid = json.loads(OUT.read_text())["grid"]
    without = [row for row in grid if row["anchors"] is not None]
    kept = [case for case in SELECTION if not case.startswith(name)]
    chosen = max(without, key=lambda row: float(np.mean([row["selection"][case] for case in kept])))["anchors"]
    settings = {"as written": None, "shipped constants": DEFAULT_ANCHORS, "chosen without it": AnchorSettings(**chosen)}
    targets = np.asarray(data.targets)
    scores = {key: top1(clip, features, targets, labels, right, value) for key, value in settings.items()}
    head = ZeroShotHead(clip, [Label(text, text) for text in labels])
    report = {
        **run_record("bench_label_anchors.py"),
        "seconds": round(time.time() - started, 1),
        "left_out": name,
        "weights": str(weights),
        "fingerprint": clip.fingerprint,
        "split": split,
        "images": len(targets),
        "chance": 1 / len(labels),
        "constants_chosen_without_it": chosen,
        "top1": scores,
        "anchor_mix": {label: round(float(mix), 3) for label, mix in zip(labels, head.anchor_mix.tolist())},
    }
    write_report(out, report)
    print(json.dumps(report["top1"]))


def main() -> None:
    """Measure and write the JSON report; print the table rows of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leave-out", choices=("eurosat", "ucmerced", "aid"), default=None)
    parser.add_argument("--weights", type=Path, default=None, help="with --leave-out: weights trained without it")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.leave_out is not None:
        if args.weights is None:
            parser.error("--leave-out needs --weights")
        leave_one_out(
            args.leave_out, args.weights, args.json or OUT.with_name(f"label-anchors-lodo-{args.leave_out}.json")
        )
        return
    started = time.time()
    clip = load_model("mini", device="cpu")
    cases: dict[str, tuple[torch.Tensor, np.ndarray, list[str], np.ndarray]] = {}
    for name, data in classification_sets().items():
        features = embed_images(clip, data.images)
        for set_name, (labels, right) in label_sets(name, data).items():
            cases[f"{name} / {set_name}"] = (features, np.asarray(data.targets), labels, right)
    grid = [None] + [AnchorSettings(s, t, g) for s, t, g in itertools.product(STRENGTHS, TEMPERATURES, GATES)]
    rows = []
    for settings in grid:
        scores = {case: top1(clip, *cases[case], settings) for case in SELECTION}
        rows.append({"anchors": None if settings is None else vars(settings), "selection": scores,
                     "selection_mean": float(np.mean(list(scores.values())))})  # fmt: skip
        print(rows[-1]["anchors"], round(rows[-1]["selection_mean"], 4), flush=True)
    best = max(rows[1:], key=lambda row: row["selection_mean"])
    chosen = AnchorSettings(**best["anchors"])
    report = {
        name: {"as written": top1(clip, *cases[name], None), "anchored": top1(clip, *cases[name], chosen)}
        for name in SELECTION + REPORT
    }
    write_report(
        args.json or OUT,
        {
            **run_record("bench_label_anchors.py"),
            "seconds": round(time.time() - started, 1),
            "grid": rows,
            "chosen_on_selection": best["anchors"],
            "shipped_default": vars(DEFAULT_ANCHORS),
            "figures": report,
        },
    )
    for name, pair in report.items():
        part = "selection" if name in SELECTION else "report"
        print(f"| {name} | {part} | {pair['as written']:.3f} | {pair['anchored']:.3f} |")


if __name__ == "__main__":
    main()

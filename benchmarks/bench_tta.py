"""Test-time augmentation (``--tta``) of the bundled mini model: accuracy gained and time paid.

``--tta N`` classifies the mean image features of N turned and mirrored views of each chip
(2: + the mirror image; 4: the four 90-degree turns; 8: both). For each N:

- zero-shot top-1 on the **val** splits (EuroSAT val, UC Merced val, AID val: where a choice
  would be made) and on the **test** splits (UC Merced, AID: reported, never chosen on);
- UCM-Captions retrieval mR on val and test;
- ``geobimors map`` throughput on the three sample scenes (the chips/s the CLI reports, model
  loading excluded; one run per setting after a warm-up run).

Splits as ``bench_mini_zero_shot.py`` (``benchmarks/splits/*.json``, seed 0).

    .venv/bin/python benchmarks/bench_tta.py            # -> docs/benchmarks/tta.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geobimors.models.clip import TTA_VIEWS, ClipModel, load_model
from geobimors.raster.images import read_rgb
from geobimors.train.data import LabelledImages, load_image_folder, load_image_list
from geobimors.train.retrieval import load_caption_set, retrieval_recalls

from bench_mini_zero_shot import SHARED, SPLITS, top1
from common import ROOT, run_record, write_report

OUT = ROOT / "docs" / "benchmarks" / "tta.json"
SCENES = (("cogeo.tif", "1,2,3"), ("L7_ETMs.tif", "3,2,1"), ("RGB.byte.tif", "1,2,3"))


def classification_sets() -> dict[str, LabelledImages]:
    """The val and test splits classified, by name."""
    sets = {"eurosat val": load_image_folder(SHARED / "eurosat_rgb" / "val")}
    for name, folder in (("ucmerced", "ucmerced"), ("aid", "aid_subset")):
        record = json.loads((SPLITS / f"{name}.json").read_text())
        for split in ("val", "test"):
            sets[f"{name} {split}"] = load_image_list(SHARED / folder, record["splits"][split])
    return sets


@torch.no_grad()
def retrieval_mr(clip: ClipModel, split: str) -> float:
    """UCM-Captions mR of one split, as ``geobimors evaluate --task retrieval`` measures it."""
    data = load_caption_set(SHARED / "captions" / "ucm_captions.jsonl", split)
    chips = np.stack([read_rgb(p, (256, 256)) for p in data.images])
    images = torch.cat([clip.encode_images(clip.preprocess(chips[s : s + 64])) for s in range(0, len(chips), 64)])
    return retrieval_recalls((images @ clip.encode_texts(data.texts).T).numpy(), data.text_image)["mR"]


def map_chips_per_second(scene: str, bands: str, tta: int) -> float:
    """The chips/s ``geobimors map`` reports for a sample scene."""
    exe = str(Path(sys.executable).with_name("geobimors"))
    with tempfile.TemporaryDirectory() as tmp:
        command = [exe, "map", str(ROOT / "sample_data" / scene), "-l", str(ROOT / "sample_data" / "labels.txt"),
                   "--bands", bands, "--tta", str(tta), "-o", f"{tmp}/out.gpkg", "--progress", "none"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"([\d.]+) chips/s", done.stdout)
    if found is None:
        raise RuntimeError(f"no chips/s in the output of {' '.join(command)}:\n{done.stdout}")
    return float(found.group(1))


def main() -> None:
    """Measure and write the JSON report; print the Markdown tables of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-map", action="store_true", help="accuracy only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    sets = classification_sets()
    accuracy: dict[str, dict[str, float]] = {}
    for views in TTA_VIEWS:
        clip = load_model("mini", "cpu", tta=views)
        row = {name: top1(clip, data) for name, data in sets.items()}
        row |= {f"captions {split} mR": retrieval_mr(clip, split) for split in ("val", "test")}
        accuracy[str(views)] = row
        print(views, {k: round(v, 3) for k, v in row.items()}, flush=True)
    throughput: dict[str, dict[str, float]] = {}
    if not args.skip_map:
        for scene, bands in SCENES:
            map_chips_per_second(scene, bands, 1)  # warm-up: file cache, text features
            throughput[scene] = {str(views): map_chips_per_second(scene, bands, views) for views in (1, 2, 4, 8)}
            print(scene, throughput[scene], flush=True)
    report: dict[str, Any] = {
        **run_record("bench_tta.py"),
        "model": "mini (bundled)",
        "fingerprint": load_model("mini", "cpu").fingerprint,
        "splits": "benchmarks/splits/*.json (seed 0); EuroSAT val as shipped; UCM-Captions' own val/test",
        "protocol": "zero-shot top-1 (readable class names x the ten templates) and retrieval mR per --tta views",
        "accuracy": accuracy,
        "map_chips_per_second": throughput,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_report(args.json, report)
    print()
    columns = list(next(iter(accuracy.values())))
    print("| --tta | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for views, row in accuracy.items():
        cells = [f"{row[c]:.1f}" if "mR" in c else f"{row[c]:.3f}" for c in columns]
        print(f"| {views} | " + " | ".join(cells) + " |")
    if throughput:
        print("\n| scene | " + " | ".join(f"--tta {v}" for v in (1, 2, 4, 8)) + " |")
        print("|---|---|---|---|---|")
        for scene, row in throughput.items():
            print(f"| `{scene}` | " + " | ".join(f"{row[str(v)]:.0f}" for v in (1, 2, 4, 8)) + " chips/s |")


if __name__ == "__main__":
    main()

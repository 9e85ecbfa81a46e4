"""Detail views (``--views 5|6 --view-blend B``) for zero-shot classification with the bundled mini model.

Each image is also read as its four quadrants (5) and centre crop (6), each resized to the 64 px input, so a
sub-view reaches the model at twice the detail of the full image; the image's features are
``normalise((1 - B) x full + B x mean of the sub-views)`` (:meth:`ClipModel.embed_chips`). For ``--tta`` 1
and 8, every (views, B) pair is scored:

- zero-shot top-1 on the **val** splits (EuroSAT val, UC Merced val, AID val); the pair with the best mean
  of the three at ``--tta 1`` is the one chosen (``DEFAULT_VIEW_BLEND`` follows it);
- top-1 on the **test** splits (UC Merced, AID) of the plain setting and the chosen pair only: reported,
  never chosen on.

Splits as ``bench_tta.py`` (``benchmarks/splits/*.json``, seed 0; EuroSAT val as shipped). Every view's
features are computed once per ``--tta`` and blended afterwards, exactly as ``embed_chips`` blends them.

    .venv/bin/python benchmarks/bench_views.py          # -> docs/benchmarks/views.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bench_tta import classification_sets

from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.models.clip import load_model
from geobimors.models.views import encode_views
from geobimors.train.data import LabelledImages

from common import ROOT, run_record, write_report

OUT = ROOT / "docs" / "benchmarks" / "views.json"
BLENDS = (0.25, 0.5, 0.75)
VAL_SETS = ("eurosat val", "ucmerced val", "aid val")
TEST_SETS = ("ucmerced test", "aid test")


def view_features(clip: Any, data: LabelledImages, batch: int = 64) -> torch.Tensor:
    """(N, 6, D) features of every image's six views (full, quadrants, centre), read one batch at a time."""
    return torch.cat([encode_views(clip, data.images[s : s + batch], 6) for s in range(0, len(data), batch)])


def blended_top1(clip: Any, data: LabelledImages, features: torch.Tensor, views: int, blend: float) -> float:
    """Zero-shot top-1 with the features ``embed_chips`` would give for (views, blend)."""
    full = features[:, 0]
    if views > 1:
        full = F.normalize((1 - blend) * full + blend * features[:, 1:views].mean(1), dim=-1)
    predicted = ZeroShotHead(clip, data.labels).logits_from_embeddings(full).argmax(1).numpy()
    return float((predicted == data.targets).mean())


def main() -> None:
    """Measure and write the JSON report; print the Markdown table of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    sets = classification_sets()
    settings = [(1, 0.0)] + [(views, blend) for views in (5, 6) for blend in BLENDS]
    grid: dict[str, dict[str, dict[str, float]]] = {}
    for tta in (1, 8):
        clip = load_model("mini", "cpu", tta=tta)
        features = {name: view_features(clip, data) for name, data in sets.items()}
        grid[str(tta)] = {}
        for views, blend in settings:
            key = "plain" if views == 1 else f"views {views}, blend {blend}"
            row = {name: blended_top1(clip, sets[name], features[name], views, blend) for name in sets}
            row["mean of val"] = float(np.mean([row[name] for name in VAL_SETS]))
            grid[str(tta)][key] = row
            print(tta, key, {k: round(v, 4) for k, v in row.items() if k in VAL_SETS or k == "mean of val"}, flush=True)
    chosen = max((k for k in grid["1"] if k != "plain"), key=lambda k: grid["1"][k]["mean of val"])
    report: dict[str, Any] = {
        **run_record("bench_views.py"),
        "model": "mini (bundled)",
        "fingerprint": load_model("mini", "cpu").fingerprint,
        "splits": "benchmarks/splits/*.json (seed 0); EuroSAT val as shipped",
        "protocol": "zero-shot top-1 (readable class names x the ten templates); the pair is chosen on the mean "
        "of the three val splits at --tta 1; test splits reported for the plain setting and the chosen pair only",
        "chosen": chosen,
        "val": {
            tta: {k: {n: row[n] for n in (*VAL_SETS, "mean of val")} for k, row in rows.items()}
            for tta, rows in grid.items()
        },
        "test": {tta: {k: {n: rows[k][n] for n in TEST_SETS} for k in ("plain", chosen)} for tta, rows in grid.items()},
        "image_passes_per_image": {"plain": 1, "views 5": 5, "views 6": 6},
        "seconds": round(time.monotonic() - started, 1),
    }
    write_report(args.json, report)
    print(f"\nchosen on val: {chosen}\n")
    print("| --tta | setting | EuroSAT val | UC Merced val | AID val | mean of val | UC Merced test | AID test |")
    print("|---|---|---|---|---|---|---|---|")
    for tta, rows in grid.items():
        for key, row in rows.items():
            tests = [f"{row[n]:.3f}" if key in ("plain", chosen) else "" for n in TEST_SETS]
            cells = [f"{row[n]:.3f}" for n in (*VAL_SETS, "mean of val")] + tests
            print(f"| {tta} | {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

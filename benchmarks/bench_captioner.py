"""Captioning vs classification throughput of the bundled model on the chips of a sample scene (issue 15).

"Captioning must not dominate a map run": the chips of `scripts/demo`'s map of sample_data/L7_ETMs.tif
(bands 3,2,1; the bundled `mini` model's 64 px chips at 10 m, 256 chips) are read once into memory, then
classified (the zero-shot head of `geobimors map`, sample_data/labels.txt: preprocessing, image tower,
logits) and captioned (`--captioner mini`: the same image tower plus the caption decoder's beam search,
no cache) batch by batch with the same batch size, at 1 and 2 torch threads. Chip reads, model loading
and the labels' text features are outside the timings. Each figure is the best of ``--repeats`` passes
(the machine is shared: the best pass is the least disturbed one).

    .venv/bin/python benchmarks/bench_captioner.py     # -> docs/benchmarks/captioner-throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geobimors.heads.classifier import get_classifier
from geobimors.labels import read_labels
from geobimors.models.captions import Captioner, CaptionerSpec
from geobimors.raster.read import ChipReader
from geobimors.run.plan import MapSettings, plan_map

from common import ROOT, machine, write_report

SCENE = ROOT / "sample_data" / "L7_ETMs.tif"
LABELS = ROOT / "sample_data" / "labels.txt"
OUT = ROOT / "docs" / "benchmarks" / "captioner-throughput.json"


def best_rate(work: Callable[[np.ndarray], Any], chips: np.ndarray, batch: int, repeats: int) -> float:
    """Chips per second of the fastest of ``repeats`` passes over all chips in batches of ``batch``."""
    work(chips[:batch])  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(chips), batch):
            work(chips[i : i + batch])
        times.append(time.perf_counter() - start)
    return len(chips) / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3, 4], help="caption beam widths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()

    plan = plan_map(
        MapSettings(scene=str(SCENE), labels=tuple(read_labels(LABELS)), model="mini", bands=(3, 2, 1), device="cpu")
    )
    batch_read = ChipReader(plan.read).read_batch(list(plan.grid.chips()))
    chips = batch_read.pixels[batch_read.keep]
    classifier = get_classifier(plan.classifier)
    captioners = {b: Captioner(CaptionerSpec("mini", 16, b), "cpu", cache=None) for b in args.beams}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch_sizes:
            row: dict[str, Any] = {"threads": threads, "batch_size": batch}
            row["classify_chips_per_s"] = best_rate(classifier.probabilities, chips, batch, args.repeats)
            for beams, captioner in captioners.items():
                rate = best_rate(partial(captioner.caption, batch_size=batch), chips, batch, args.repeats)
                row[f"caption_beam{beams}_chips_per_s"] = rate
                # a map run with captions does both: the share of its model time spent captioning
                row[f"caption_beam{beams}_share_of_map"] = (1 / rate) / (1 / rate + 1 / row["classify_chips_per_s"])
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    report = {
        "machine": {
            **machine(),
            "note": os.environ.get("BENCH_NOTE", "the load average below says what else ran"),
            "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "command": "benchmarks/bench_captioner.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "json"
        ),
        "scene": str(SCENE.relative_to(ROOT)),
        "chips": len(chips),
        "chip_shape": list(chips.shape[1:]),
        "model": "mini",
        "model_fingerprint": classifier.clip.fingerprint,
        "labels": len(plan.classifier.labels),
        "captioner": "mini (max 16 words, no cache)",
        "rows": rows,
    }
    write_report(args.json, report)


if __name__ == "__main__":
    main()

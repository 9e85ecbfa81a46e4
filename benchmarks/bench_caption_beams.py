"""Beam width against caption quality of the bundled captioner on UCM-Captions (issue 15).

Each width captions every image of UCM-Captions val (where a width would be chosen) and test
(reported only) through ``geobimors.train.captioning.evaluate_captioning``, the scorer of
``geobimors evaluate --task captioning``: BLEU-1..4, ROUGE-L and CIDEr.

    .venv/bin/python benchmarks/bench_caption_beams.py     # -> docs/benchmarks/captioner-beams.json
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from geobimors.models.clip import load_model
from geobimors.train.captioning import METRICS, evaluate_captioning

from common import ROOT, machine, write_report

CAPTIONS = ROOT.parent / "shared" / "data" / "captions" / "ucm_captions.jsonl"
OUT = ROOT / "docs" / "benchmarks" / "captioner-beams.json"


def main() -> None:
    """Score every beam width on val and test; write the JSON report and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for beams in args.beams:
        for split in ("val", "test"):
            measured = evaluate_captioning(CAPTIONS, "mini", split, device="cpu", num_beams=beams)
            scores.setdefault(str(beams), {})[split] = {k: float(measured[k]) for k in METRICS}
    report: dict[str, object] = {
        "command": "python benchmarks/bench_caption_beams.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": machine(),
        "model_fingerprint": load_model("mini", "cpu").fingerprint,
        "data": str(CAPTIONS.relative_to(ROOT.parent)),
        "scores": scores,
    }
    write_report(args.json, report)
    print()
    print("| beams | val BLEU-4 | val CIDEr | test BLEU-4 | test CIDEr |")
    print("|---|---|---|---|---|")
    for beams, row in scores.items():
        cells = [f"{row[s]['BLEU-4']:.3f} | {row[s]['CIDEr']:.2f}" for s in ("val", "test")]
        print(f"| {beams} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

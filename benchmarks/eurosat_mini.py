"""EuroSAT evaluation of the bundled mini model and of few-shot heads on it (issues 3 and 4).

    python benchmarks/eurosat_mini.py [--seeds 1 2 3] [--json docs/benchmarks/eurosat.json]

* Zero-shot top-1 on the whole EuroSAT validation split (4,050 chips) with the
  plain class names, and with held-out paraphrases never used in training.
* Base-to-new protocol (first five sorted classes base, last five new): 16-shot
  CoOp, CoCoOp and BiMoRS (``--captioner none``: no captioner runs offline)
  trained on base classes of the train split, best epoch chosen on 16 other
  train images per class, evaluated on the validation split (base among base,
  new among new, harmonic mean), against zero-shot.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from geobimors.heads.checkpoint import build_head
from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.labels import Label
from geobimors.models.captions import CaptionerSpec
from geobimors.models.clip import load_model
from geobimors.models.mini.classes import HELD_OUT_PARAPHRASES, PLAIN_CLASS_NAMES
from geobimors.train.api import load_training_data
from geobimors.train.data import load_image_folder
from geobimors.train.evaluate import evaluate, evaluate_base_to_new
from geobimors.train.loop import TrainSettings, train_head

from common import ROOT, machine, pack_data, recorded_reads

EUROSAT = ROOT.parent / "shared" / "data" / "eurosat_rgb"
PLAIN = PLAIN_CLASS_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "eurosat.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--data", type=Path, default=EUROSAT.parent, help="the shared data folder")
    parser.add_argument("--device", default="cpu", help="torch device for the model and heads")
    parser.add_argument(
        "--pack", type=Path, default=None, help="Only write a .tar.xz of the data files this run reads (see --data)."
    )
    args = parser.parse_args()
    eurosat = args.data / "eurosat_rgb"
    if args.pack is not None:
        with recorded_reads() as needed:
            load_image_folder(eurosat / "val")
            for seed in args.seeds:
                load_training_data(eurosat / "train", args.shots, seed=seed, classes="base", val_shots=16)
        pack_data(args.data, needed, args.pack)
        return
    clip = load_model("mini", device=args.device)
    val = load_image_folder(eurosat / "val")
    folders = sorted(PLAIN)
    plain = [Label(PLAIN[f], PLAIN[f]) for f in folders]
    paraphrased = [Label(HELD_OUT_PARAPHRASES[f], HELD_OUT_PARAPHRASES[f]) for f in folders]
    val.labels = plain
    report: dict[str, object] = {"machine": machine(), "val_images": len(val)}
    zero = ZeroShotHead(clip, plain)
    report["zero_shot_plain"] = evaluate(zero, val).to_dict()
    para = val.subset(range(len(folders)))
    para.labels = paraphrased
    report["zero_shot_paraphrase"] = evaluate(zero, para).to_dict()
    report["zero_shot_base_to_new"] = {
        k: v for k, v in evaluate_base_to_new(zero, val).items() if not k.endswith("_report")
    }
    print(json.dumps({k: report[k] for k in ("zero_shot_base_to_new",)}), flush=True)
    runs = []
    for kind in ("coop", "cocoop", "bimors"):
        for seed in args.seeds:
            data = load_training_data(eurosat / "train", args.shots, seed=seed, classes="base", val_shots=16)
            data.train.labels = plain[:5]
            assert data.val is not None
            data.val.labels = plain[:5]
            head = build_head(kind, clip, data.train.labels, captioner=CaptionerSpec("none"))
            start = time.monotonic()
            result = train_head(head, data.train, data.val, TrainSettings(seed=seed), progress_mode="none")
            b2n = evaluate_base_to_new(head, val)
            run = {
                "head": kind,
                "seed": seed,
                "trainable_parameters": result.trainable_parameters,
                "best_epoch": result.best_epoch,
                "train_seconds": round(time.monotonic() - start, 1),
                "base": b2n["base"],
                "new": b2n["new"],
                "harmonic_mean": b2n["harmonic_mean"],
            }
            runs.append(run)
            print(json.dumps(run), flush=True)
    report["few_shot_runs"] = runs
    summary = {}
    for kind in ("coop", "cocoop", "bimors"):
        mine = [r for r in runs if r["head"] == kind]
        summary[kind] = {m: float(np.mean([r[m] for r in mine])) for m in ("base", "new", "harmonic_mean")}
    report["few_shot_mean"] = summary
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

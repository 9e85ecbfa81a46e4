"""Weight-space ensembling (WiSE-FT) of geobimors-mini's stage 1 and stage 2 weights, chosen on val.

Fine-tuning on new datasets costs some accuracy on the old one. Interpolating every weight
between the stage 1 (EuroSAT) and the stage 2 (joint) checkpoints, theta = (1 - a) * theta1 +
a * theta2 (Wortsman et al., CVPR 2022), keeps most of both. The mixing weight ``a`` is chosen
on the validation splits only (the ones ``train_mini_joint.py`` selects on): the best mean
score among the weights whose EuroSAT val accuracy stays at or above ``--eurosat-floor``.

    .venv/bin/python training/wise_mini.py ../shared/data --stage1 STAGE1.safetensors \\
        --stage2 out/mini-joint/selected.safetensors --work out/mini-joint \\
        --out geobimors/models/mini/mini.safetensors --log docs/mini-wise-log.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from train_mini_joint import cached_data, evaluate, selection_score

from geobimors.models.clip import ClipModel
from geobimors.models.mini import build_mini, trainable_state_dict


def mix(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], a: float) -> dict[str, torch.Tensor]:
    """(1 - a) * first + a * second for float tensors; integer ones (BatchNorm counters) from ``second``."""
    return {k: (1 - a) * v + a * second[k] if v.is_floating_point() else second[k] for k, v in first.items()}


def main() -> None:
    """Evaluate the mixing weights on val, keep the chosen one."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--stage1", type=Path, required=True)
    parser.add_argument("--stage2", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="train_mini_joint.py's folder (its data cache)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    parser.add_argument("--eurosat-floor", type=float, default=0.893, help="stage 1 val (0.903) less 1 point")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model: Any
    model, tokenizer, _ = build_mini()
    model.eval()
    clip = ClipModel("mini", model, tokenizer, torch.device("cpu"), "fp32")
    _, evals = cached_data(model, tokenizer, clip, args.data, None, args.work / "data-cache")
    first, second = load_file(str(args.stage1)), load_file(str(args.stage2))
    results = []
    for a in args.weights:
        model.load_state_dict(mix(first, second, a), strict=False)
        record: dict[str, Any] = {"a": a, **evaluate(model, clip, evals)}
        record["score"] = selection_score(record)
        results.append(record)
        print(json.dumps(record), flush=True)
    allowed = [r for r in results if r["val_eurosat"] >= args.eurosat_floor] or results
    best = max(allowed, key=lambda r: r["score"])
    report = {
        "method": "WiSE-FT: (1 - a) * stage 1 + a * stage 2, a chosen on val",
        "stage1": str(args.stage1),
        "stage2": str(args.stage2),
        "eurosat_floor": args.eurosat_floor,
        "chosen_a": best["a"],
        "results": results,
    }
    if args.out is not None:
        model.load_state_dict(mix(first, second, best["a"]), strict=False)
        save_file(trainable_state_dict(model), str(args.out), metadata={"wise_a": str(best["a"])})
    if args.log is not None:
        args.log.write_text(json.dumps(report, indent=2) + "\n")
    print("chosen", best)


if __name__ == "__main__":
    main()

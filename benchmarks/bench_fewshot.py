"""Few-shot adaptation of the bundled mini model: 1/4/16 shots x heads on three datasets (issue 14).

    python benchmarks/bench_fewshot.py [--shots 1 4 16] [--seeds 0] [--methods ...] [--epochs 5]

Splits: ``benchmarks/splits/*.json`` (UC Merced and AID subset: seeded, stratified
60/20/20; EuroSAT: its train/ and val/ trees). Shots are drawn with the seed from
the train split; prompt learners keep their best epoch on ``--val-per-class``
images per class of the val split, and the probe/Tip-Adapter choose their one
hyperparameter on the same images. Every method is scored on the same test images:
the UC Merced and AID test splits, and a seeded ``--eurosat-eval-per-class`` images
per class of the EuroSAT validation split (no EuroSAT test split is shared).
Class names are the readable names of :mod:`geobimors.class_names`. Training time is
wall-clock on this machine, including encoding the shots for probe/tip (their fit
alone is in ``fit_seconds``). Results are appended to ``--json`` as they finish, and
a rerun skips the rows already there (run the cheap methods first, then the prompt
learners), so a partial run is still usable; a row that fails records its error and
runs again on the next run.

On a machine without ``../shared`` (a lent GPU): ``--pack data.tar.xz`` here writes the
files the run reads (every other file of the datasets as an empty placeholder, so every
seeded choice of images is the same), then there ``tar xJf data.tar.xz -C DIR`` and run
with ``--data DIR --device cuda``. ``benchmarks/eurosat_mini.py`` takes the same options.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geobimors.heads.checkpoint import build_head
from geobimors.heads.probe import EmbeddingHead
from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.models.captions import CaptionerSpec
from geobimors.models.clip import ClipModel, load_model
from geobimors.train.api import caption_function
from geobimors.train.data import load_image_folder, load_image_list
from geobimors.train.embedding import embed_images, fit_embedding_head
from geobimors.train.evaluate import evaluate
from geobimors.train.loop import TrainSettings, train_head

from common import ROOT, machine, pack_data, recorded_reads

SHARED = ROOT.parent / "shared" / "data"
SPLITS = ROOT / "benchmarks" / "splits"
# "bimors" runs without captions (--captioner none); "bimors-captions" with the bundled captioner (mini), as published.
METHODS = ("zero-shot", "probe", "tip", "coop", "cocoop", "bimors", "bimors-captions")


def dataset_splits(
    name: str, shots: int, seed: int, val_per_class: int, eurosat_eval: int, shared: Path = SHARED
) -> dict[str, Any]:
    """Shots from train, validation images from val, the fixed test images (under ``shared``)."""
    if name == "eurosat":
        root = shared / "eurosat_rgb"
        # Read into memory here, so that the timed training reads no files (as when folders loaded eagerly).
        train = load_image_folder(root / "train", shots, seed).in_memory()
        # Validation images: other train images than the shots.
        val = load_image_folder(root / "train", val_per_class, seed + 1, exclude=set(train.sources), at_most=True)
        val = val.in_memory()
        test = load_image_folder(root / "val", eurosat_eval, 0)
        return {"train": train, "val": val, "test": test, "test_split": f"val ({eurosat_eval} per class, seed 0)"}
    record = json.loads((SPLITS / f"{name}.json").read_text())
    root = shared / Path(record["root"]).name
    splits = record["splits"]
    return {
        "train": load_image_list(root, splits["train"], shots, seed).in_memory(),
        "val": load_image_list(root, splits["val"], val_per_class, seed).in_memory(),
        "test": load_image_list(root, splits["test"]),
        "test_split": f"test (benchmarks/splits/{name}.json, split seed {record['seed']})",
    }


def run_one(
    clip: ClipModel,
    method: str,
    data: dict[str, Any],
    test_features: torch.Tensor,
    seed: int,
    settings: TrainSettings,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train (unless zero-shot) and score one method on one dataset and shot count."""
    train, val, test = data["train"], data["val"], data["test"]
    targets = torch.as_tensor(test.targets)
    if method == "zero-shot":
        head = ZeroShotHead(clip, test.labels)
        logits = clip.logit_scale * test_features @ head.class_features.T
        return {"accuracy": float((logits.argmax(1).cpu() == targets).float().mean()), "train_seconds": 0.0}
    torch.manual_seed(seed)
    spec = CaptionerSpec("mini" if method == "bimors-captions" else "none")
    head = build_head(method.removesuffix("-captions"), clip, train.labels, 4, "a photo of a", spec)
    captions = caption_function(head, device, "fp32")  # None unless the head reads captions
    start = time.monotonic()
    extra: dict[str, Any] = {}
    if isinstance(head, EmbeddingHead):
        _, details = fit_embedding_head(head, train, val, seed)
        seconds = time.monotonic() - start
        logits = head.logits_from_embeddings(test_features)
        accuracy = float((logits.argmax(1).cpu() == targets).float().mean())
        extra = {"fit_seconds": details["fit_seconds"], "choice": details["choice"]}
    else:
        result = train_head(head, train, val, settings, captions, "none")
        seconds = time.monotonic() - start
        accuracy = evaluate(head, test, batch_size=64, captions=captions).accuracy
        extra = {"best_epoch": result.best_epoch, "epochs": settings.epochs}
    return {"accuracy": accuracy, "train_seconds": seconds, **extra}


def timing_1000(clip: ClipModel, seed: int = 0) -> dict[str, Any]:
    """Probe and Tip-Adapter on 1,000 EuroSAT train images (100 per class), 4 val images per class."""
    root = SHARED / "eurosat_rgb" / "train"
    train = load_image_folder(root, 100, seed).in_memory()  # the timed fits read no files
    val = load_image_folder(root, 4, seed + 1, exclude=set(train.sources), at_most=True).in_memory()
    timings = {}
    for method in ("probe", "tip"):
        head = build_head(method, clip, train.labels)
        assert isinstance(head, EmbeddingHead)
        start = time.monotonic()
        _, details = fit_embedding_head(head, train, val, seed)
        timings[method] = {
            "examples": len(train),
            "total_seconds": time.monotonic() - start,
            "embed_seconds": details["embed_seconds"],
            "fit_seconds": details["fit_seconds"],
        }
    return timings


def pack_shared_data(args: argparse.Namespace, out: Path) -> None:
    """Write a tar of the shared-data files this run reads (:func:`common.pack_data`)."""
    with recorded_reads() as needed:
        for name in args.datasets:
            for shots in args.shots:
                for seed in args.seeds:
                    dataset_splits(name, shots, seed, args.val_per_class, args.eurosat_eval_per_class, args.data)
    pack_data(args.data, needed, out)


def markdown_table(report: dict[str, Any], shots: tuple[int, ...] = (1, 4, 16)) -> str:
    """Top-1 (training seconds) per dataset, method and shot count, from the report's rows.

    With several seeds a cell is the mean top-1 +- its standard deviation over the seeds, and the
    mean training time.
    """
    rows = [r for r in report.get("results", []) if "error" not in r]
    lines = ["| dataset | method | " + " | ".join(f"{k}-shot" for k in shots) + " |"]
    lines.append("|---|---|" + "---|" * len(shots))

    def cell(found: list[dict[str, Any]]) -> str:
        accuracy = np.array([r["accuracy"] for r in found])
        seconds = float(np.mean([r["train_seconds"] for r in found]))
        if len(found) == 1:
            return f"{accuracy[0]:.3f} ({seconds:.0f} s)"
        return f"{accuracy.mean():.3f} ± {accuracy.std():.3f} ({seconds:.0f} s, {len(found)} seeds)"

    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method in METHODS:
            mine = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            if not mine:
                continue
            if method == "zero-shot":
                cells = [f"{mine[0]['accuracy']:.3f}"] * len(shots)
            else:
                by_shots: dict[int, list[dict[str, Any]]] = {}
                for r in mine:
                    by_shots.setdefault(r["shots"], []).append(r)
                cells = [cell(by_shots[k]) if k in by_shots else "not run" for k in shots]
            lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="results (default: docs/benchmarks/fewshot.json; with --timing fewshot-timing.json)",
    )
    parser.add_argument("--datasets", nargs="+", default=["eurosat", "ucmerced", "aid"])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=5, help="Prompt learners' epochs (paper: 10).")
    parser.add_argument("--batch-size", type=int, default=8, help="Prompt learners' batch size (paper: 4).")
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--eurosat-eval-per-class", type=int, default=100)
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--device", default="cpu", help="torch device for the model, heads and captioner")
    parser.add_argument("--timing", action="store_true", help="Only time probe/tip on 1,000 examples.")
    parser.add_argument("--table", action="store_true", help="Only print the Markdown table of --json.")
    parser.add_argument(
        "--pack", type=Path, default=None, help="Only write a .tar.xz of the data files this run reads (see --data)."
    )
    args = parser.parse_args()
    if args.json is None:
        args.json = ROOT / "docs" / "benchmarks" / ("fewshot-timing.json" if args.timing else "fewshot.json")
    if args.table:
        print(markdown_table(json.loads(args.json.read_text())))
        return
    if args.pack is not None:
        pack_shared_data(args, args.pack)
        return
    clip = load_model("mini", device=args.device)
    if args.timing:
        report = json.loads(args.json.read_text()) if args.json.exists() else {}
        report["timing_1000"] = {**timing_1000(clip), "machine": machine()}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["timing_1000"], indent=2))
        return
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "python benchmarks/bench_fewshot.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("json", "data")
        ),
        "results": [],
    }
    if args.json.exists():  # resume: keep finished rows, run the rest
        previous = json.loads(args.json.read_text())
        report["results"] = [r for r in previous.get("results", []) if "error" not in r]  # errors run again
        report["runs"] = previous.get("runs", [])
    report.setdefault("runs", []).append({"command": report.pop("command"), "machine": report["machine"]})
    done = {(r["dataset"], r["method"], r["shots"], r["seed"]) for r in report["results"]}
    settings_for = {
        seed: TrainSettings(epochs=args.epochs, batch_size=args.batch_size, seed=seed) for seed in args.seeds
    }
    for name in args.datasets:
        test_features: torch.Tensor | None = None
        for shots in args.shots:
            for seed in args.seeds:
                todo = [
                    m
                    for m in args.methods
                    if (name, m, 0 if m == "zero-shot" else shots, seed) not in done
                    and not (m == "zero-shot" and (shots != args.shots[0] or seed != args.seeds[0]))
                ]
                if not todo:
                    continue
                data = dataset_splits(name, shots, seed, args.val_per_class, args.eurosat_eval_per_class, args.data)
                if test_features is None:
                    test_features = embed_images(clip, data["test"].images)
                for method in todo:
                    try:
                        row = run_one(clip, method, data, test_features, seed, settings_for[seed], args.device)
                    except Exception as error:  # keep the other rows of a long run; the error is the row
                        traceback.print_exc()
                        row = {"error": f"{type(error).__name__}: {error}"}
                    row.update(
                        run=len(report["runs"]),
                        dataset=name,
                        method=method,
                        shots=0 if method == "zero-shot" else shots,
                        seed=seed,
                        test_split=data["test_split"],
                        test_images=len(data["test"]),
                        classes=len(data["test"].labels),
                    )
                    report["results"].append(row)
                    print(json.dumps(row), flush=True)
                    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Write the fixed, seeded train/val/test splits of the shared scene datasets.

UC Merced and the AID subset come without splits: each class's images are
shuffled with ``--seed`` and cut 60/20/20 into train/val/test (stratified by
class). EuroSAT keeps the train/ and val/ trees it ships with (no test split is
shared: report validation figures). Paths are relative to the dataset folder,
so the files work wherever ``../shared/data`` lives. Run from the repository root:

    .venv/bin/python benchmarks/make_splits.py            # -> benchmarks/splits/*.json

Never train or select on ``test``; few-shot training draws its shots from ``train``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SPLITS = ROOT / "benchmarks" / "splits"
DATASETS = {"ucmerced": "ucmerced", "aid": "aid_subset"}
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def split_dataset(root: Path, seed: int) -> dict[str, list[str]]:
    """Per class: shuffle (seeded), then 60% train, 20% val, 20% test; relative paths, sorted."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[str]] = {name: [] for name in FRACTIONS}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p.relative_to(root).as_posix() for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        order = [files[i] for i in rng.permutation(len(files))]
        n_train = round(len(files) * FRACTIONS["train"])
        n_val = round(len(files) * FRACTIONS["val"])
        splits["train"] += order[:n_train]
        splits["val"] += order[n_train : n_train + n_val]
        splits["test"] += order[n_train + n_val :]
    return {name: sorted(paths) for name, paths in splits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=SHARED)
    args = parser.parse_args()
    SPLITS.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/make_splits.py " + " ".join(sys.argv[1:])
    for name, folder in DATASETS.items():
        root = args.data / folder
        splits = split_dataset(root, args.seed)
        record = {
            "dataset": name,
            "root": f"../shared/data/{folder}",
            "seed": args.seed,
            "fractions": FRACTIONS,
            "stratified_by": "class folder",
            "command": command.strip(),
            "counts": {k: len(v) for k, v in splits.items()},
            "splits": splits,
        }
        out = SPLITS / f"{name}.json"
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{out}: {record['counts']}")
    eurosat = {
        "dataset": "eurosat",
        "root": "../shared/data/eurosat_rgb",
        "seed": None,
        "command": "as shipped: train/ and val/ trees (no test split is shared; report val figures)",
        "splits": {"train": "train/", "val": "val/", "test": "val/"},
    }
    (SPLITS / "eurosat.json").write_text(json.dumps(eurosat, indent=1) + "\n")


if __name__ == "__main__":
    main()

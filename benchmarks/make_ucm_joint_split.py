"""Write the joint UC Merced split used to train the bundled model on labels and captions together.

UC Merced has two independent splits here: the classification split of this project
(``benchmarks/splits/ucmerced.json``, 60/20/20, seed 0) and UCM-Captions' own split (field
``split`` of ``../shared/data/captions/ucm_captions.jsonl``, 1,680/210/210). An image may be
trained on only if it is in the train split of **both**; an image in **either** test split is
never trained or selected on. The rest (in neither test split, not in both trains) is the joint
validation set used for epoch selection. Run from the repository root::

    .venv/bin/python benchmarks/make_ucm_joint_split.py     # -> benchmarks/splits/ucm_joint.json
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ROOT / "benchmarks" / "splits"
CAPTIONS = ROOT.parent / "shared" / "data" / "captions" / "ucm_captions.jsonl"


def joint_split(classification: dict[str, list[str]], caption_rows: list[dict[str, object]]) -> dict[str, list[str]]:
    """Train = train in both splits; test = test in either; val = everything else (paths relative to ucmerced/)."""
    by_class = {path: split for split, paths in classification.items() for path in paths}
    by_caption = {str(row["image"]).removeprefix("../ucmerced/"): str(row["split"]) for row in caption_rows}
    if set(by_class) != set(by_caption):
        raise SystemExit("the UC Merced classification split and UCM-Captions do not list the same images")
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for path in sorted(by_class):
        pair = (by_class[path], by_caption[path])
        if pair == ("train", "train"):
            out["train"].append(path)
        elif "test" in pair:
            out["test"].append(path)
        else:
            out["val"].append(path)
    return out


def main() -> None:
    """Read both splits and write ``benchmarks/splits/ucm_joint.json``."""
    record = json.loads((SPLITS / "ucmerced.json").read_text())
    rows = [json.loads(line) for line in CAPTIONS.read_text().splitlines() if line.strip()]
    splits = joint_split(record["splits"], rows)
    out = {
        "dataset": "ucmerced+ucm_captions",
        "root": "../shared/data/ucmerced",
        "from": ["benchmarks/splits/ucmerced.json", "../shared/data/captions/ucm_captions.jsonl (field split)"],
        "rule": "train: train in both; test: test in either; val: the rest",
        "command": "python benchmarks/make_ucm_joint_split.py",
        "counts": {k: len(v) for k, v in splits.items()},
        "splits": splits,
    }
    path = SPLITS / "ucm_joint.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{path}: {out['counts']}")


if __name__ == "__main__":
    main()

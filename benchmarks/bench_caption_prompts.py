"""Do RSITMD's captions make better class prompts? (issue 15: "use their text where it helps").

    .venv/bin/python benchmarks/bench_caption_prompts.py [--json docs/benchmarks/caption-prompts.json]

RSITMD's images are not here, but its file names carry the class (``airport_10.tif``), and its 32
classes cover all 30 of the AID subset and 11 of UC Merced's 21. For each class with RSITMD captions
(train split only), the class text feature of the zero-shot head (readable name through the ten
remote-sensing templates) is mixed with the mean of the class's caption embeddings:
``normalise((1 - w) * name + w * captions)``. ``w`` is chosen on each dataset's val split and
reported on its test split (``benchmarks/splits``), with the bundled model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.models.clip import ClipModel, load_model
from geobimors.train.data import LabelledImages, load_image_list
from geobimors.train.embedding import embed_images

from common import ROOT, machine

SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# UC Merced folders with an RSITMD class of the same meaning (the others keep their name alone).
UCM_TO_RSITMD = {
    "agricultural": "farmland",
    "airplane": "plane",
    "baseballdiamond": "baseballfield",
    "beach": "beach",
    "denseresidential": "denseresidential",
    "forest": "forest",
    "harbor": "port",
    "intersection": "intersection",
    "mediumresidential": "mediumresidential",
    "overpass": "viaduct",
    "parkinglot": "parking",
    "river": "river",
    "sparseresidential": "sparseresidential",
    "storagetanks": "storagetanks",
}


def rsitmd_captions() -> dict[str, list[str]]:
    """RSITMD train captions by class (the class is the image file name before its number)."""
    by_class: dict[str, list[str]] = {}
    for line in (SHARED / "captions" / "rsitmd_captions.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            name = record["image"].rsplit("/", 1)[-1].rsplit("_", 1)[0]
            by_class.setdefault(name, []).extend(c for c in record["captions"] if c.strip())
    return by_class


@torch.no_grad()
def accuracies(clip: ClipModel, data: LabelledImages, keys: list[str | None], captions: dict[str, list[str]]) -> dict:
    """Top-1 for each mixing weight ``w``."""
    images = embed_images(clip, data.images, batch_size=256)
    names = ZeroShotHead(clip, data.labels).class_features
    described = [F.normalize(clip.encode_texts(captions[k]).mean(0), dim=-1) if k in captions else None for k in keys]
    out = {}
    for w in WEIGHTS:
        classes = torch.stack(
            [n if d is None else F.normalize((1 - w) * n + w * d, dim=-1) for n, d in zip(names, described)]
        )
        out[str(w)] = float(((images @ classes.T).argmax(1).numpy() == data.targets).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "caption-prompts.json")
    args = parser.parse_args()
    clip = load_model("mini", "cpu")
    captions = rsitmd_captions()
    report: dict = {"machine": machine(), "model_fingerprint": clip.fingerprint, "weights": list(WEIGHTS)}
    for name, folder, to_key in (
        ("aid", "aid_subset", lambda folder: folder),
        ("ucmerced", "ucmerced", lambda folder: UCM_TO_RSITMD.get(folder)),
    ):
        splits = json.loads((ROOT / "benchmarks" / "splits" / f"{name}.json").read_text())["splits"]
        row: dict = {}
        for split in ("val", "test"):
            data = load_image_list(SHARED / folder, splits[split])
            folders: dict[int, str] = {}
            for source, target in zip(data.sources, data.targets):
                folders.setdefault(int(target), Path(source).parent.name.lower())
            keys = [to_key(folders[i]) for i in range(len(data.labels))]
            row[split] = accuracies(clip, data, keys, captions)
            row["classes_described"] = sum(k in captions for k in keys)
        chosen = max(WEIGHTS, key=lambda w: row["val"][str(w)])
        row["chosen_w_on_val"] = chosen
        row["test_at_chosen"] = row["test"][str(chosen)]
        row["test_names_only"] = row["test"]["0.0"]
        report[name] = row
        print(name, row, flush=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

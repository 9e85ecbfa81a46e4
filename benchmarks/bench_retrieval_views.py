"""Multi-perspective views and keyword guidance for image-text retrieval on UCM-Captions (issue 15).

MPS-CLIP's two additions to CLIP retrieval, measured with the protocol of `geobimors evaluate --task
retrieval` (R@1/5/10 both ways, mR) and the same functions (`geobimors/train/retrieval.py`):

- views: every image as its full view plus sub-crops (4 quadrants; + the centre crop), each resized to
  the model input; an image's similarity to a text is the best of its views (max-response), or the full
  view blended with the best sub-view (``--view-blend B``).
- keyword guidance: each image's caption from the bundled captioner (`--captioner mini`) is encoded by the
  model's text encoder and its similarity to each text blended in with weight W (``--caption-guidance W``).

Every setting is chosen on the **val** split and then reported on **test**, which chooses nothing. Features,
captions and text embeddings are computed once per split; each setting only re-ranks them.

    .venv/bin/python benchmarks/bench_retrieval_views.py          # -> docs/benchmarks/retrieval-views.json

Re-run it after the bundled weights change: it prints the markdown table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geobimors.models.clip import load_model
from geobimors.models.views import encode_views
from geobimors.raster.images import read_rgb
from geobimors.train.retrieval import (
    aggregate_views,
    guided_similarity,
    load_caption_set,
    load_retrieval_captioner,
    retrieval_recalls,
)

from common import ROOT, machine, write_report

CAPTIONS = ROOT.parent / "shared" / "data" / "captions" / "ucm_captions.jsonl"
OUT = ROOT / "docs" / "benchmarks" / "retrieval-views.json"
VIEW_SETTINGS: list[tuple[int, float | None]] = [
    (1, None),
    (5, None),
    (6, None),
    (5, 0.25),
    (5, 0.5),
    (5, 0.75),
    (6, 0.25),
    (6, 0.5),
    (6, 0.75),
]
GUIDANCE = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def view_name(views: int, blend: float | None) -> str:
    """Readable name of a view setting (the CLI options that give it)."""
    if views == 1:
        return "--views 1"
    return f"--views {views}" + ("" if blend is None else f" --view-blend {blend}")


def split_features(clip: Any, split: str, captioner: str, batch: int) -> dict[str, Any]:
    """Per-view image-text similarities, caption-text similarities and caption owners of one split."""
    data = load_caption_set(CAPTIONS, split)
    guide = load_retrieval_captioner(captioner, "cpu")
    first = read_rgb(data.images[0])
    size = (first.shape[1], first.shape[0])
    features, generated = [], []
    start = time.perf_counter()
    for i in range(0, len(data.images), batch):
        chips = np.stack([read_rgb(p, size) for p in data.images[i : i + batch]])
        features.append(encode_views(clip, chips, 6).cpu())
        generated += guide.caption(chips)
    with torch.no_grad():
        texts = clip.encode_texts(data.texts).cpu()
        captions = clip.encode_texts(generated).cpu()
    per_view = torch.einsum("ivd,td->ivt", torch.cat(features), texts).numpy()
    print(f"{split}: {len(data.images)} images, {len(data.texts)} captions, {time.perf_counter() - start:.0f} s")
    return {
        "per_view": per_view,  # (I, 6, T): full view, 4 quadrants, centre crop
        "caption_text": (captions @ texts.T).numpy(),
        "text_image": data.text_image,
        "n_images": len(data.images),
        "n_captions": len(data.texts),
        "examples": [{"image": p.name, "generated": g} for p, g in list(zip(data.images, generated))[::42]],
    }


def similarity(feats: dict[str, Any], views: int, blend: float | None, weight: float) -> np.ndarray:
    """The similarity `geobimors evaluate --views V [--view-blend B] --caption-guidance W` ranks by."""
    image_text = aggregate_views(feats["per_view"][:, :views], blend)
    return guided_similarity(image_text, feats["caption_text"], weight)


def mr(feats: dict[str, Any], views: int, blend: float | None, weight: float) -> dict[str, float]:
    """Recalls and mR of one setting."""
    return retrieval_recalls(similarity(feats, views, blend, weight), feats["text_image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--captioner", default="mini")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_model(args.model, "cpu")
    feats = {split: split_features(clip, split, args.captioner, args.batch_size) for split in ("val", "test")}

    # 1. views alone (no guidance): choose on val
    views_table = {
        view_name(v, b): {split: mr(feats[split], v, b, 0.0) for split in ("val", "test")} for v, b in VIEW_SETTINGS
    }
    best_views = max(VIEW_SETTINGS, key=lambda s: views_table[view_name(*s)]["val"]["mR"])
    # 2. guidance alone (full view only): choose W on val
    guidance_table = {str(w): {split: mr(feats[split], 1, None, w) for split in ("val", "test")} for w in GUIDANCE}
    best_w = max(GUIDANCE, key=lambda w: guidance_table[str(w)]["val"]["mR"])
    # 3. both: W chosen on val for the view setting chosen on val
    both_table = {str(w): {split: mr(feats[split], *best_views, w) for split in ("val", "test")} for w in GUIDANCE}
    best_both_w = max(GUIDANCE, key=lambda w: both_table[str(w)]["val"]["mR"])

    rows = {
        "plain (--views 1)": views_table[view_name(1, None)],
        f"views chosen on val ({view_name(*best_views)})": views_table[view_name(*best_views)],
        f"caption guidance chosen on val (--caption-guidance {best_w})": guidance_table[str(best_w)],
        f"both ({view_name(*best_views)} --caption-guidance {best_both_w})": both_table[str(best_both_w)],
    }
    load = os.getloadavg()
    report = {
        "machine": {
            **machine(),
            "note": "2-core AMD EPYC shared with a training job, no GPU",
            "load_average_1_5_15_at_end": [round(x, 2) for x in load],
        },
        "command": "benchmarks/bench_retrieval_views.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
        "data": str(CAPTIONS.relative_to(ROOT.parent)),
        "model": args.model,
        "model_fingerprint": clip.fingerprint,
        "captioner": args.captioner,
        "protocol": "UCM-Captions; every setting chosen on val, reported on test",
        "n": {split: {"images": f["n_images"], "captions": f["n_captions"]} for split, f in feats.items()},
        "chosen_on_val": {
            "views": view_name(*best_views),
            "caption_guidance_alone": best_w,
            "caption_guidance_with_views": best_both_w,
        },
        "summary": rows,
        "views": views_table,
        "caption_guidance_full_view": guidance_table,
        "caption_guidance_with_chosen_views": both_table,
        "caption_examples": {split: f["examples"] for split, f in feats.items()},
    }
    write_report(args.json, report)
    print()
    print("| setting (chosen on val) | val mR | test I2T R@1 | R@5 | R@10 | T2I R@1 | R@5 | R@10 | test mR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        t = r["test"]
        recalls = " | ".join(f"{t[f'{w}_R@{k}']:.1f}" for w in ("i2t", "t2i") for k in (1, 5, 10))
        print(f"| {name} | {r['val']['mR']:.1f} | {recalls} | **{t['mR']:.1f}** |")


if __name__ == "__main__":
    main()

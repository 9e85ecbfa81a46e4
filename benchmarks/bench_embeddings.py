"""Embeddings store benchmarks (issue 13 §4): bytes per chip, re-labelling speed, memory vs store size.

* bytes per chip of a float16 store at 512-d (ViT-B/16 width) and 384-d (the mini model's width),
  float32 for reference, on a 100,000-chip grid;
* re-labelling a 1,000,000-row store (384-d float16, the mini model's fingerprint) with 20 labels,
  against the mini model's image pass (preprocess + image tower, the part of ``map`` a store saves)
  and a random-weight ViT-B-16 image pass (open_clip's architecture, no download);
* peak memory (max RSS, fresh process each) of re-labelling 100,000 vs 1,000,000 rows.

Synthetic unit vectors stand in for real embeddings: the timings and sizes do not depend on their
values (float16 random vectors compress like real ones: hardly at all).

Run from the repository root: ``.venv/bin/python benchmarks/bench_embeddings.py``
(writes docs/benchmarks/embeddings.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from geobimors.embeddings.store import StoreMeta, StoreWriter, chips_table, grid_metadata
from geobimors.raster.grid import ChipGrid

from common import ROOT, machine

OUT = ROOT / "docs" / "benchmarks" / "embeddings.json"
LABELS_20 = [
    "annual crop land", "forest", "herbaceous vegetation", "highway", "industrial buildings", "pasture land",
    "permanent crop land", "residential buildings", "river", "sea or lake", "airport", "solar farm", "beach",
    "bare soil", "glacier", "golf course", "harbour", "parking lot", "railway", "wetland",
]  # fmt: skip


def synthetic_grid(n_side: int) -> ChipGrid:
    """An n_side x n_side grid of 64 px chips over a 10 m UTM scene (no raster needed)."""
    size = 64 * n_side
    return ChipGrid(
        size, size, Affine(10.0, 0, 400_000.0, 0, -10.0, 5_600_000.0), CRS.from_epsg(32632), 64, 64, 64, 64, 64, 64
    )


def synthetic_meta(grid: ChipGrid, dim: int, dtype: str, model: str, fingerprint: str) -> StoreMeta:
    return StoreMeta(
        model=model,
        model_fingerprint=fingerprint,
        embedding_dim=dim,
        dtype=dtype,
        chip_size=(64, 64),
        gsd=10.0,
        overlap=(0, 0),
        bands=(1, 2, 3),
        scaling=None,
        normalisation={"mean": [0.5] * 3, "std": [0.25] * 3},
        grid=grid_metadata(grid),
        scene="synthetic.tif",
        n_chips=len(grid),
    )


def write_synthetic_store(path: Path, n_side: int, dim: int, dtype: str, model: str = "mini", fp: str = "x") -> Path:
    """A store of n_side**2 chips with random unit embeddings, written in 65,536-row slices."""
    grid = synthetic_grid(n_side)
    meta = synthetic_meta(grid, dim, dtype, model, fp)
    rng = np.random.default_rng(0)
    n = len(grid)
    bbox = (400_000.0, 5_600_000.0 - 640.0 * n_side, 400_000.0 + 640.0 * n_side, 5_600_000.0)
    with StoreWriter(path, meta, bbox=bbox, overwrite=True) as writer:
        for start in range(0, n, 65_536):
            index = np.arange(start, min(start + 65_536, n))
            rows, cols = index // n_side, index % n_side
            windows = np.stack([cols * 64, rows * 64, np.full_like(rows, 64), np.full_like(rows, 64)], axis=1)
            emb = rng.standard_normal((len(index), dim), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            writer.write(chips_table(meta, rows, cols, windows, np.ones(len(index), np.float32), emb))
        writer.close()
    return path


def bytes_per_chip(tmp: Path) -> dict[str, float]:
    out = {}
    for dim, dtype in ((512, "float16"), (384, "float16"), (512, "float32"), (384, "float32")):
        path = write_synthetic_store(tmp / f"bytes-{dim}-{dtype}.parquet", 316, dim, dtype)  # 99,856 chips
        out[f"{dtype}_{dim}d"] = path.stat().st_size / 316**2
        out[f"{dtype}_{dim}d_embedding_only"] = dim * (2 if dtype == "float16" else 4)
        path.unlink()
    return out


def image_pass_rate(model: str, size: int, batch: int, batches: int) -> float:
    """Chips/s of preprocess + image tower (what ``map`` spends per chip besides reading it)."""
    from geobimors.models.clip import load_model

    clip = load_model(model, device="cpu")
    chips = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        clip.encode_images(clip.preprocess(chips))  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            clip.encode_images(clip.preprocess(chips))
    return batch * batches / (time.perf_counter() - start)


def vit_b16_rate(batch: int = 8, batches: int = 3) -> float:
    """Chips/s of a random-weight open_clip ViT-B-16 image tower at 224 px (no weights download)."""
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    images = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        model.encode_image(images)
        start = time.perf_counter()
        for _ in range(batches):
            model.encode_image(images)
    return batch * batches / (time.perf_counter() - start)


_RELABEL_CHILD = """
import json, sys, time
from geobimors.embeddings.classify import open_relabeller
from geobimors.labels import labels_from_names
start = time.perf_counter()
relabeller = open_relabeller(sys.argv[1], labels_from_names(json.loads(sys.argv[2])), device="cpu")
loaded = time.perf_counter()
before = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
n = 0
for table in relabeller.records():
    n += table.num_rows
done = time.perf_counter()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent's image.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rows": n, "load_s": loaded - start, "label_s": done - loaded, "max_rss_mb": hwm / 1024,
                  "rss_before_labelling_mb": before / 1024}))
"""


def relabel(path: Path) -> dict[str, float]:
    """Re-label a store in a fresh process: labelling time (without model load) and peak RSS."""
    env_path = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", _RELABEL_CHILD, str(path), json.dumps(LABELS_20)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def relabel_to_gpkg(path: Path, out: Path) -> dict[str, float]:
    """``map --from-embeddings`` end to end (labels + styled GeoPackage), in this process."""
    from geobimors.embeddings.classify import open_relabeller, relabel_to_file
    from geobimors.labels import labels_from_names

    began = time.perf_counter()
    relabeller = open_relabeller(path, labels_from_names(LABELS_20), device="cpu")
    loaded = time.perf_counter()
    summary = relabel_to_file(relabeller, out, overwrite=True, progress_mode="none")
    done = time.perf_counter()
    return {
        "rows": summary.n_classified,
        "load_s": loaded - began,
        "total_s_without_load": done - loaded,
        "chips_per_s_with_gpkg": summary.n_classified / (done - loaded),
    }


def memory_only() -> None:
    """Re-measure only the peak memory of re-labelling 100,000 vs 1,000,000 rows (updates the JSON)."""
    from geobimors.models.clip import load_model

    results = json.loads(OUT.read_text())
    mini = load_model("mini", device="cpu")
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp_dir:
        runs = {}
        for n_side in (316, 1000):
            path = write_synthetic_store(Path(tmp_dir) / f"m{n_side}.parquet", n_side, 384, "float16", "mini",
                                         mini.fingerprint)  # fmt: skip
            runs[str(n_side**2)] = relabel(path)
            path.unlink()
    results["memory"] = {"command": "python benchmarks/bench_embeddings.py --memory-only", "relabel": runs}
    results["peak_rss_mb"] = {rows: run["max_rss_mb"] for rows, run in runs.items()}
    results.setdefault("notes", []).append(
        "relabel[*].max_rss_mb of the full run is ru_maxrss, which Linux carries over exec from the parent: "
        "superseded by memory (VmHWM of the child)"
    )
    print(json.dumps(results["memory"], indent=1))
    OUT.write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    from geobimors.models.clip import load_model

    results: dict[str, object] = {"machine": machine(), "command": "python benchmarks/bench_embeddings.py"}
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp_dir:
        tmp = Path(tmp_dir)
        results["bytes_per_chip"] = bytes_per_chip(tmp)
        print(json.dumps(results["bytes_per_chip"], indent=1), flush=True)
        mini = load_model("mini", device="cpu")
        mini_dim = int(mini.encode_images(torch.zeros(1, 3, *mini.image_size)).shape[-1])
        stores = {}
        for n_side in (316, 1000):  # 99,856 and 1,000,000 rows
            began = time.perf_counter()
            stores[n_side] = write_synthetic_store(
                tmp / f"relabel-{n_side}.parquet", n_side, mini_dim, "float16", "mini", mini.fingerprint
            )
            print(f"wrote {n_side**2} rows in {time.perf_counter() - began:.0f} s", flush=True)
        # The machine is shared: interleave the runs and keep the best of two of each.
        relabel_runs: dict[str, list[dict[str, float]]] = {str(n**2): [] for n in stores}
        mini_size = mini.default_chip_size or 64
        mini_rates, vit_rates = [], []
        for _ in range(2):
            for n, path in stores.items():
                relabel_runs[str(n**2)].append(relabel(path))
            mini_rates.append(image_pass_rate("mini", mini_size, 64, 10))
            vit_rates.append(vit_b16_rate())
            print(json.dumps(relabel_runs), mini_rates, vit_rates, flush=True)
        results["relabel"] = relabel_runs
        best = min(relabel_runs[str(1000**2)], key=lambda run: run["label_s"])
        relabel_rate = best["rows"] / best["label_s"]
        mini_rate, vit_rate = max(mini_rates), max(vit_rates)
        results["rates"] = {
            "relabel_chips_per_s_1M_20_labels": relabel_rate,
            "mini_image_pass_chips_per_s": mini_rate,
            "mini_chip_px": mini_size,
            "vit_b16_random_image_pass_chips_per_s": vit_rate,
            "speedup_vs_mini": relabel_rate / mini_rate,
            "speedup_vs_vit_b16": relabel_rate / vit_rate,
        }
        results["peak_rss_mb"] = {rows: max(run["max_rss_mb"] for run in runs) for rows, runs in relabel_runs.items()}
        results["store_file_mb_1M_384d_float16"] = stores[1000].stat().st_size / 1e6
        results["gpkg_end_to_end_100k"] = relabel_to_gpkg(stores[316], tmp / "relabel.gpkg")
    print(json.dumps(results["rates"], indent=1))
    OUT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    memory_only() if "--memory-only" in sys.argv else main()

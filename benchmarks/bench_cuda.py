"""CUDA checks and GPU throughput: what runs on a GPU gives what it gives on the CPU, and how fast.

    python benchmarks/bench_cuda.py --train FOLDER --eval FOLDER [--json docs/benchmarks/cuda.json]

Needs a CUDA GPU. FOLDER trees are ImageFolders (EuroSAT RGB: ``--train`` with at least 24 images
per class, ``--eval`` any number). Every check runs even when an earlier one fails; each records
``ok`` and its figures, or the error.

1. ``embed`` of a sample scene (bands 3,2,1) on the CPU and on CUDA (fp32, bf16, fp16): cosine
   between the stored embeddings of each chip.
2. ``map_scene`` zero-shot on the CPU and on CUDA: top-1 agreement and the largest score change.
3. Heads trained on CUDA (probe, tip, coop, bimors with the bundled captioner): accuracy on
   ``--eval`` by the head on CUDA and on the CPU.
4. ``caption`` with the bundled captioner on CUDA and on the CPU: identical captions.
5. ``embed`` through a ``dask.distributed`` cluster whose one worker holds the ``GPU`` resource.
6. Throughput on CUDA: the map pipeline (windowed reads of a 6,144 px COG mosaic of the sample
   scenes, in-process with 2, 4 or 8 reader threads, classification; no GeoPackage) against the
   bare ``encode_image`` forward pass on the same chips already on the GPU, for the bundled model
   (4,096 chips of 64 px) and ViT-B-16 (random weights, 576 chips of 224 px). Second of two runs
   of each: the scene is in GDAL's block cache, so reads cost decoding-free window copies.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from bench_map import bare_forward, region_chips
from rasterio.windows import Window

from geobimors import map_scene
from geobimors.heads.classifier import get_classifier
from geobimors.labels import read_labels
from geobimors.run.execute import LocalExecutor
from geobimors.run.pipeline import map_plan
from geobimors.run.plan import MapSettings, plan_map

from common import DATA, ROOT, machine, make_mosaic, window_vrt

SCENE = ROOT / "sample_data" / "L7_ETMs.tif"
LABELS = ROOT / "sample_data" / "labels.txt"
GPU = "cuda"  # --device cpu: a dry run of this script on a machine without one


def cli(*args: str) -> str:
    """Run the geobimors CLI as a user would; its stderr (summary) on success."""
    proc = subprocess.run([sys.executable, "-m", "geobimors.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"geobimors {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stderr


def store_embeddings(path: Path) -> np.ndarray:
    table = pq.read_table(path, columns=["row", "col", "embedding"]).sort_by(
        [("row", "ascending"), ("col", "ascending")]
    )
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    return {"chips": len(cos), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def check_embed(work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ref = work / "cpu.parquet"
    cli("embed", str(SCENE), "--bands", "3,2,1", "-o", str(ref), "--device", "cpu", "--dtype", "float32", "-q")
    for precision in ("fp32", "bf16", "fp16") if GPU == "cuda" else ("fp32", "bf16"):
        path = work / f"cuda-{precision}.parquet"
        cli("embed", str(SCENE), "--bands", "3,2,1", "-o", str(path), "--device", GPU, "--precision", precision,
            "--dtype", "float32", "-q")  # fmt: skip
        out[precision] = cosines(store_embeddings(ref), store_embeddings(path))
    out["ok"] = (
        out["fp32"]["cosine_min"] > 0.9999 and min(v["cosine_min"] for k, v in out.items() if k != "fp32") > 0.99
    )
    return out


def check_map() -> dict[str, Any]:
    def labels_and_scores(device: str) -> tuple[np.ndarray, np.ndarray]:
        frame = map_scene(SCENE, LABELS, bands=(3, 2, 1), device=device).sort_values(["row", "col"])
        return frame["label"].to_numpy(), frame["score"].to_numpy()

    cpu_labels, cpu_scores = labels_and_scores("cpu")
    gpu_labels, gpu_scores = labels_and_scores(GPU)
    out: dict[str, Any] = {
        "chips": len(cpu_labels),
        "top1_agreement": float((cpu_labels == gpu_labels).mean()),
        "max_score_change": float(np.abs(cpu_scores - gpu_scores).max()),
    }
    if GPU == "cuda":  # PyTorch runs fp32 convolutions in TF32 on CUDA by default: how much of the gap is that?
        torch.backends.cudnn.allow_tf32 = False
        try:
            strict_labels, strict_scores = labels_and_scores(GPU)
        finally:
            torch.backends.cudnn.allow_tf32 = True
        out["top1_agreement_without_tf32"] = float((cpu_labels == strict_labels).mean())
        out["max_score_change_without_tf32"] = float(np.abs(cpu_scores - strict_scores).max())
    # A chip whose two best labels are within rounding of each other may swap; more than 1 in 100 is a bug.
    out["ok"] = out["top1_agreement"] >= 0.99
    return out


def accuracy(report: str) -> float:
    return float(json.loads(Path(report).read_text())["accuracy"])


def check_heads(train: Path, evaluate: Path, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = {
        "probe": [],
        "tip": [],
        "coop": ["--epochs", "3"],
        "bimors": ["--epochs", "3", "--captioner", "mini"],
    }
    for head, extra in runs.items():
        path = work / f"{head}.safetensors"
        start = time.perf_counter()
        cli("train", str(train), "--head", head, "--shots", "16", "--val-shots", "8", "-o", str(path),
            "--device", GPU, "-q", *extra)  # fmt: skip
        seconds = time.perf_counter() - start
        scores = {}
        for device in (GPU, "cpu"):
            report = work / f"{head}-{device}.json"
            cli("evaluate", str(evaluate), "--head", str(path), "--device", device, "--json", str(report), "-q")
            scores[device] = accuracy(report)
        out[head] = {"train_s": seconds, "accuracy_cuda": scores[GPU], "accuracy_cpu": scores["cpu"]}
    out["ok"] = all(abs(v["accuracy_cuda"] - v["accuracy_cpu"]) <= 0.01 for v in out.values())
    return out


def check_captions(evaluate: Path, work: Path) -> dict[str, Any]:
    captions = {}
    for device in ("cpu", GPU):
        path = work / f"captions-{len(captions)}.csv"
        cli("caption", str(evaluate), "--captioner", "mini", "--device", device, "-o", str(path), "-q")
        captions[device] = sorted(path.read_text().splitlines())
    same = sum(a == b for a, b in zip(captions["cpu"], captions[GPU], strict=True))
    n = len(captions["cpu"]) - 1  # the header line
    return {"captions": n, "identical": same - 1, "ok": same - 1 >= 0.95 * n}


def check_distributed(work: Path) -> dict[str, Any]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, resources={"GPU": 1}, processes=True) as cluster:
        path = work / "cluster.parquet"
        cli("embed", str(SCENE), "--bands", "3,2,1", "-o", str(path), "--device", GPU, "--dtype", "float32",
            "--scheduler", cluster.scheduler_address, "-q")  # fmt: skip
    result = cosines(store_embeddings(work / "cuda-fp32.parquet"), store_embeddings(path))
    result["ok"] = result["cosine_min"] > 0.9999
    return result


def check_throughput(work: Path) -> dict[str, Any]:
    scene = make_mosaic(DATA / "mosaic-6144.tif", size=6144)
    out: dict[str, Any] = {}
    for model, chip, side, batch in (("mini", 64, 64, 256), ("ViT-B-16:random", 224, 24, 128)):
        side = side if GPU == "cuda" else 4
        region = window_vrt(scene, Window(0, 0, side * chip, side * chip), work / f"region-{chip}.vrt")
        for precision in ("fp32", "bf16"):
            settings = MapSettings(
                scene=str(region),
                labels=tuple(read_labels(LABELS)),
                model=model,
                chip_size=str(chip),
                batch_size=batch,
                device=GPU,
                precision=precision,
            )
            plan = plan_map(settings)
            chips = region_chips(plan)
            get_classifier(plan.classifier)  # model load and text features are not per-chip costs
            bare = [bare_forward(model, chips, batch, precision, GPU) for _ in range(2)]
            result: dict[str, Any] = {
                "chips": len(chips),
                "chip_px": chip,
                "batch_size": batch,
                "bare_chips_per_s": len(chips) / min(bare),
            }
            for threads in (2, 4, 8):  # in-process reader threads: the CLI takes 4 with --device cuda
                piped = []
                for _ in range(2):
                    start = time.perf_counter()
                    frame = map_plan(plan, progress_mode="none", executor=LocalExecutor(threads=threads))
                    piped.append(time.perf_counter() - start)
                    assert len(frame) == len(chips)
                result[f"pipeline_chips_per_s_{threads}_threads"] = len(chips) / min(piped)
            out[f"{model} {precision}"] = result
    out["ok"] = True
    return out


def run(name: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = check()
    except Exception as exc:  # a failed check is a result too; the others still run
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)", flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=1), flush=True)
    if "traceback" in result:
        print(result["traceback"], flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    parser.add_argument("--parts", default="embed,map,heads,captions,distributed,throughput")
    args = parser.parse_args()
    global GPU
    GPU = args.device
    if GPU == "cuda" and not torch.cuda.is_available():
        print("bench_cuda.py needs a CUDA GPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-cuda-"))
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "embed": lambda: check_embed(work),
        "map": check_map,
        "heads": lambda: check_heads(args.train, args.eval, work),
        "captions": lambda: check_captions(args.eval, work),
        "distributed": lambda: check_distributed(work),
        "throughput": lambda: check_throughput(work),
    }
    results: dict[str, Any] = {"machine": machine()}
    for name in args.parts.split(","):
        results[name] = run(name, checks[name])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(results[name]["ok"] for name in args.parts.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of ``geobimors map`` (issue 2): throughput, memory and precision, in one run.

    python benchmarks/bench_map.py [--json docs/benchmarks/map.json]

1. Throughput: ViT-B-16 (random weights cost what pretrained ones cost) on a
   fixed 16 x 16-chip region (256 chips of 224 px) of a 20,000 x 20,000 px COG
   mosaic of the sample scenes: chips/s of the whole map pipeline (windowed
   reads, Dask, classification, GeoPackage) versus the bare ``encode_image``
   forward pass on the same chips already in memory, same batch size.
2. Memory: peak RSS of ``geobimors map`` over the whole 20,000 x 20,000 scene
   and over a 2,000 x 2,000 crop with the same settings (bundled mini model).
3. Precision: bf16 autocast versus fp32 on CPU: speed-up and top-1 agreement
   (meaningful for the trained mini model only: with random weights every chip
   scores alike and rounding alone decides the top label).

    python benchmarks/bench_map.py --parts memory   # rerun one part, keep the others
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from geobimors.heads.classifier import ClassifierSpec, get_classifier
from geobimors.labels import read_labels
from geobimors.models.clip import load_model
from geobimors.raster.read import ChipReader
from geobimors.run.pipeline import map_to_file
from geobimors.run.plan import MapSettings, plan_map

from common import DATA, ROOT, machine, make_mosaic, window_vrt

LABELS = ROOT / "sample_data" / "labels.txt"


def region_chips(plan) -> np.ndarray:  # type: ignore[no-untyped-def]
    reader = ChipReader(plan.read)
    return reader.read_batch(list(plan.grid.chips())).pixels


def bare_forward(model_name: str, chips: np.ndarray, batch: int, precision: str = "fp32", device: str = "cpu") -> float:
    """Seconds for encode_image over chips already on the device (preprocessed outside the timing)."""
    model = load_model(model_name, device, precision)
    inputs = [model.preprocess(chips[i : i + batch]) for i in range(0, len(chips), batch)]
    with torch.inference_mode(), model.autocast():
        model.model.encode_image(inputs[0])  # warm-up: allocator, kernels
        synchronize(model.device)
        start = time.perf_counter()
        for x in inputs:
            model.model.encode_image(x)
        synchronize(model.device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings of CUDA calls end when the work does)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def pipeline(settings: MapSettings, workdir: Path) -> tuple[float, int]:
    plan = plan_map(settings)
    get_classifier(plan.classifier)  # model load and text features are not part of the per-chip cost
    out = workdir / f"run-{time.monotonic_ns()}.gpkg"
    start = time.perf_counter()
    summary = map_to_file(plan, out, progress_mode="none")
    return time.perf_counter() - start, summary.n_classified


def throughput(scene: Path, workdir: Path, model: str = "ViT-B-16:random", batch: int = 32) -> dict[str, object]:
    region = window_vrt(scene, Window(0, 0, 16 * 224, 16 * 224), workdir / "region.vrt")
    settings = MapSettings(
        scene=str(region),
        labels=tuple(read_labels(LABELS)),
        model=model,
        chip_size="224",
        batch_size=batch,
        device="cpu",
    )
    chips = region_chips(plan_map(settings))
    n = len(chips)
    bare, piped = [], []
    for _ in range(2):  # interleaved, best of two: ratios hold on a noisy machine
        bare.append(bare_forward(model, chips, batch))
        seconds, classified = pipeline(settings, workdir)
        assert classified == n
        piped.append(seconds)
    return {
        "model": model,
        "chips": n,
        "batch_size": batch,
        "bare_chips_per_s": n / min(bare),
        "pipeline_chips_per_s": n / min(piped),
        "ratio": min(bare) / min(piped),
        "bare_s": bare,
        "pipeline_s": piped,
    }


# Runs the command and prints its peak RSS. Linux keeps a process's maximum RSS across fork and
# exec, so a command started straight from this (multi-GB) benchmark would report the benchmark's
# own size; this small launcher forks from a ~10 MB interpreter instead.
_PEAK_RSS_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(args: list[str]) -> tuple[float, float]:
    """Run a command; return (its peak RSS in MB, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_LAUNCHER, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed: {proc.stderr}")
    return int(proc.stdout.split()[-1]) / 1024, time.perf_counter() - start


def memory(scene: Path, workdir: Path, model: str = "mini") -> dict[str, object]:
    crop = window_vrt(scene, Window(0, 0, 2000, 2000), workdir / "crop.vrt")
    exe = str(Path(sys.executable).with_name("geobimors"))
    results = {}
    for name, path in (("crop_2000", crop), ("full_20000", scene)):
        out = workdir / f"{name}.gpkg"
        rss, seconds = peak_rss(
            [
                exe,
                "map",
                str(path),
                "-l",
                str(LABELS),
                "-m",
                model,
                "--device",
                "cpu",
                "-o",
                str(out),
                "--overwrite",
                "--progress",
                "none",
            ]
        )
        results[name] = {"peak_rss_mb": rss, "seconds": seconds}
    results["ratio"] = results["full_20000"]["peak_rss_mb"] / results["crop_2000"]["peak_rss_mb"]  # type: ignore[index]
    results["model"] = model
    return results


def precision(scene: Path, workdir: Path, model: str, batch: int = 32) -> dict[str, object]:
    region = window_vrt(scene, Window(0, 0, 16 * 224, 16 * 224), workdir / "region.vrt")
    labels = tuple(read_labels(LABELS))
    chip = 224 if model != "mini" else 64
    settings = MapSettings(
        scene=str(region),
        labels=labels,
        model=model,
        chip_size=str(chip),
        gsd=None,
        keep_scene_gsd=True,
        batch_size=batch,
        device="cpu",
    )
    chips = region_chips(plan_map(settings))[:256]
    out: dict[str, object] = {"model": model, "chips": len(chips)}
    top1 = {}
    for prec in ("fp32", "bf16"):
        classifier = get_classifier(ClassifierSpec(model, labels, "cpu", prec))
        classifier.probabilities(chips[:2])
        start = time.perf_counter()
        probs = torch.cat([classifier.probabilities(chips[i : i + batch]) for i in range(0, len(chips), batch)])
        out[f"{prec}_s"] = time.perf_counter() - start
        top1[prec] = probs.argmax(1)
    out["speedup"] = out["fp32_s"] / out["bf16_s"]  # type: ignore[operator]
    out["top1_agreement"] = float((top1["fp32"] == top1["bf16"]).float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "map.json")
    parser.add_argument(
        "--parts",
        default="throughput,precision,memory",
        help="comma-separated parts to run; the others are kept from an existing --json report",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    scene = make_mosaic(DATA / "mosaic-20k.tif")
    report: dict[str, object] = json.loads(args.json.read_text()) if args.json.exists() else {}
    report.update({"machine": machine(), "scene": str(scene.relative_to(ROOT))})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "throughput" in parts:
            report["throughput"] = throughput(scene, work)
            print(json.dumps(report["throughput"]), flush=True)
        if "precision" in parts:
            report["precision"] = [precision(scene, work, "ViT-B-16:random"), precision(scene, work, "mini")]
            print(json.dumps(report["precision"]), flush=True)
        if "memory" in parts:
            report["memory"] = memory(scene, work)
            print(json.dumps(report["memory"]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

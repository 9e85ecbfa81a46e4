"""Many scenes in one run against one run per scene (issue 17): time, identical chips, peak memory.

16 scenes are copies of the shared aerial scene ``cogeo.tif`` (1024 x 1024 px, 0.6 m, EPSG:3857),
each moved to its own cell of a 4 x 4 mosaic so that none overlaps another. Then, with the bundled
``mini`` model (64 px chips at the scene's resolution: 256 chips per scene):

* ``geobimors map S1 ... S16 -o all.gpkg`` (one process, the model loaded once), against
* ``geobimors map Si -o i.gpkg`` for each scene (16 processes, 16 model loads);

the total time ratio, whether every scene's chips are identical in both (labels, scores, polygons),
and the peak RSS of the 16-scene run against a 1-scene run (each started from a small launcher, see
``bench_map.peak_rss``).

Run: ``PYTHONPATH=$PWD python benchmarks/bench_multiscene.py [--json docs/benchmarks/multiscene.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import rasterio
from affine import Affine
from bench_map import peak_rss

from common import ROOT, machine

SCENE = ROOT.parent / "shared" / "data" / "scenes" / "cogeo.tif"
LABELS = ["forest", "snow", "road", "grassland", "buildings", "water"]
OPTIONS = ["--chip-size", "64", "--gsd", "scene", "--batch-size", "64", "--progress", "none", "-q"]


def make_scenes(folder: Path, n: int = 16) -> list[Path]:
    """``n`` copies of the shared scene, each moved to its own cell of a square mosaic."""
    with rasterio.open(SCENE) as ds:
        t, width, height = ds.transform, ds.width, ds.height
    side = int(n**0.5)
    scenes = []
    for i in range(n):
        path = folder / f"tile_{i:02d}.tif"
        shutil.copyfile(SCENE, path)
        row, col = divmod(i, side)
        with rasterio.open(path, "r+") as ds:
            ds.transform = Affine(t.a, t.b, t.c + col * width * t.a, t.d, t.e, t.f + row * height * t.e)
        scenes.append(path)
    return scenes


def command(*args: object) -> list[str]:
    return [str(Path(sys.executable).with_name("geobimors")), "map", *map(str, args)]


def same_chips(single: Path, multi: gpd.GeoDataFrame, name: str) -> bool:
    """The single-scene output equals that scene's rows of the multi-scene output."""
    one = gpd.read_file(single, layer="chips")
    part = multi[multi.scene == name].drop(columns=["scene", "source_crs"]).reset_index(drop=True)
    if len(one) != len(part) or not one.drop(columns="geometry").equals(part.drop(columns="geometry")):
        return False
    return all(a.equals_exact(b, 0) for a, b in zip(one.geometry, part.geometry))


def run(n: int, model: str) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bench-multiscene-"))
    try:
        scenes = make_scenes(work, n)
        labels = work / "labels.txt"
        labels.write_text("\n".join(LABELS) + "\n")
        common = ["-l", labels, "-m", model, *OPTIONS]
        load_before = os.getloadavg()
        multi_rss, multi_s = peak_rss(command(*scenes, "-o", work / "all.gpkg", *common))
        single_s, single_rss = [], []
        for scene in scenes:
            rss, seconds = peak_rss(command(scene, "-o", work / f"{scene.stem}.gpkg", *common))
            single_s.append(seconds)
            single_rss.append(rss)
        one_rss = single_rss[0]
        multi = gpd.read_file(work / "all.gpkg", layer="chips")
        identical = [same_chips(work / f"{s.stem}.gpkg", multi, s.stem) for s in scenes]
        return {
            "machine": machine(),
            "load_average_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
            "scenes": n,
            "scene": "copies of ../shared/data/scenes/cogeo.tif (1024 x 1024 px, 0.6 m, EPSG:3857) on a 4 x 4 mosaic",
            "model": model,
            "options": " ".join(OPTIONS),
            "chips": len(multi),
            "one_run_s": round(multi_s, 1),
            "single_runs_total_s": round(sum(single_s), 1),
            "time_ratio_one_run_over_singles": round(multi_s / sum(single_s), 3),
            "identical_chips_scenes": f"{sum(identical)}/{n}",
            "peak_rss_mb_16_scenes": round(multi_rss),
            "peak_rss_mb_1_scene": round(one_rss),
            "peak_rss_mb_single_runs_max": round(max(single_rss)),
            "rss_ratio_16_over_1": round(multi_rss / one_rss, 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--model", default="mini")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.scenes, args.model)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

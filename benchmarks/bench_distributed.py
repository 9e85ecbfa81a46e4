"""In-process versus LocalCluster execution of ``geobimors map`` (issue 5), same total cores.

    python benchmarks/bench_distributed.py [--json docs/benchmarks/distributed.json]

The same region of the 20,000 x 20,000 px mosaic (3,000 x 3,000 px, 64 px chips
at the model's native 10 m: 2,209 chips) is mapped with the bundled mini model:
in-process (Dask threads, torch using every core), on a LocalCluster of one
worker process (all cores), and of two worker processes (half the cores each).
Cluster start-up (process spawn, imports, model load) is timed separately from the
mapping, which is timed from submission to the finished GeoPackage.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rasterio.windows import Window

from geobimors.heads.classifier import get_classifier
from geobimors.labels import read_labels
from geobimors.run.execute import DistributedExecutor, LocalExecutor
from geobimors.run.pipeline import map_to_file
from geobimors.run.plan import MapSettings, plan_map
from geobimors.run.tasks import classify_batch

from common import DATA, ROOT, machine, make_mosaic, window_vrt


def warm(executor: DistributedExecutor, plan) -> None:  # type: ignore[no-untyped-def]
    """Load the model on every worker (one small batch per worker) so start-up is timed apart."""
    for _ in executor.map(classify_batch, [(plan.read, plan.classifier, plan.batch(0), 1)] * 4):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "distributed.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scene = make_mosaic(DATA / "mosaic-20k.tif")
    labels = tuple(read_labels(ROOT / "sample_data" / "labels.txt"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        region = window_vrt(scene, Window(0, 0, 3000, 3000), Path(tmp) / "region.vrt")
        plan = plan_map(MapSettings(scene=str(region), labels=labels, model="mini", device="cpu"))
        get_classifier(plan.classifier)
        cores = os.cpu_count() or 1
        for name, workers in (("in-process", None), ("LocalCluster, 1 worker", 1), ("LocalCluster, 2 workers", 2)):
            start = time.perf_counter()
            executor = LocalExecutor() if workers is None else DistributedExecutor(workers=workers)
            if isinstance(executor, DistributedExecutor):
                warm(executor, plan)
            startup = time.perf_counter() - start
            times = []
            for repeat in range(args.repeats):
                out = Path(tmp) / f"{workers}-{repeat}.gpkg"
                begin = time.perf_counter()
                summary = map_to_file(plan, out, progress_mode="none", executor=executor)
                times.append(time.perf_counter() - begin)
                assert summary.n_classified + summary.n_skipped == plan.n_chips
            executor.close()
            row = {
                "execution": name,
                "workers": workers or 0,
                "cores": cores,
                "chips": plan.n_chips,
                "startup_s": round(startup, 2),
                "map_s": times,
                "chips_per_s": plan.n_chips / min(times),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    base = results[0]["chips_per_s"]
    for row in results:
        row["relative_to_in_process"] = row["chips_per_s"] / base
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

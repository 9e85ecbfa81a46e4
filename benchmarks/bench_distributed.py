"""In-process versus Dask clusters for ``geobimors map`` (issues 5 and 17), same total cores.

    python benchmarks/bench_distributed.py [--json docs/benchmarks/distributed.json] [--repeats 3]

The same region of the 20,000 x 20,000 px mosaic (3,000 x 3,000 px, 64 px chips
at the model's native 10 m: 2,209 chips) is mapped with the bundled mini model:
in-process (threads, torch using every core), on a LocalCluster of one worker
process (all cores) and of two worker processes (half the cores each), and on a
cluster of separate OS processes over TCP -- a ``dask scheduler`` and N ``dask worker``
processes with ``--nthreads 1`` started here (N = cores), configured as docs/distributed.md
recommends for workers started by hand (``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON``).
Cluster start-up (process spawn, imports, model load) is timed separately from the
mapping, which is timed from submission to the finished GeoPackage. All executors are started
first and the mapping runs go round-robin over them (idle clusters wait beside the running one),
so a change of load on a shared machine hits every configuration alike; the 1-minute load average
before each run is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rasterio.windows import Window

from geobimors.heads.classifier import get_classifier
from geobimors.labels import read_labels
from geobimors.run.cluster import dask_environment
from geobimors.run.execute import DistributedExecutor, LocalExecutor
from geobimors.run.pipeline import map_to_file
from geobimors.run.plan import MapSettings, plan_map
from geobimors.run.tasks import classify_batch

from common import DATA, ROOT, machine, make_mosaic, window_vrt


def warm(executor: DistributedExecutor, plan) -> None:  # type: ignore[no-untyped-def]
    """Load the model on every worker (one small batch per worker) so start-up is timed apart."""
    for _ in executor.map(classify_batch, [(plan.read, plan.classifier, plan.batch(0), 1)] * 4):
        pass


def torch_threads() -> int:
    """Torch intra-op threads of this process (run on the workers)."""
    import torch

    return int(torch.get_num_threads())


@contextmanager
def process_cluster(workers: int, root: Path) -> Iterator[str]:
    """A ``dask scheduler`` and ``workers`` ``dask worker --nthreads 1`` OS processes over TCP; yields the address."""
    dask = str(Path(sys.executable).with_name("dask"))
    root.mkdir(parents=True, exist_ok=True)
    scheduler_file = root / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **dask_environment(max(1, (os.cpu_count() or 1) // workers)),  # as docs/distributed.md recommends
    }
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--port", "0", "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for i in range(workers):
            processes.append(
                subprocess.Popen(
                    [dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--name", f"w{i}"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        while not scheduler_file.exists():
            if processes[0].poll() is not None:
                raise RuntimeError("dask scheduler exited at start")
            time.sleep(0.1)
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        for proc in reversed(processes):
            proc.terminate()
        for proc in processes:
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "distributed.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--executions",
        default="in-process,local-1,local-2,tcp",
        help="comma-separated subset of: in-process, local-1, local-2, tcp (in-process is the baseline)",
    )
    args = parser.parse_args()
    scene = make_mosaic(DATA / "mosaic-20k.tif")
    labels = tuple(read_labels(ROOT / "sample_data" / "labels.txt"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        region = window_vrt(scene, Window(0, 0, 3000, 3000), Path(tmp) / "region.vrt")
        plan = plan_map(MapSettings(scene=str(region), labels=labels, model="mini", device="cpu"))
        get_classifier(plan.classifier)
        cores = os.cpu_count() or 1
        chosen = args.executions.split(",")
        configurations = [
            (name, workers)
            for key, name, workers in (
                ("in-process", "in-process", None),
                ("local-1", "LocalCluster, 1 worker", 1),
                ("local-2", "LocalCluster, 2 workers", 2),
                ("tcp", f"separate processes over TCP, scheduler + {cores} workers x 1 thread", -cores),
            )
            if key in chosen
        ]
        with contextlib.ExitStack() as stack:
            # Every executor is started (and timed) first; then the runs go round-robin, so a change
            # of load on the shared machine hits every configuration alike.
            executors: list[LocalExecutor | DistributedExecutor] = []
            for name, workers in configurations:
                load = os.getloadavg()
                start = time.perf_counter()
                executor: LocalExecutor | DistributedExecutor
                if workers is None:
                    executor = LocalExecutor()
                elif workers > 0:
                    executor = DistributedExecutor(workers=workers)
                else:
                    address = stack.enter_context(process_cluster(-workers, Path(tmp) / "tcp"))
                    executor = DistributedExecutor(address)
                    executor.client.wait_for_workers(-workers, timeout=300)
                stack.callback(executor.close)
                if isinstance(executor, DistributedExecutor):
                    warm(executor, plan)
                executors.append(executor)
                probe = (
                    executor.client.run(lambda: (os.environ.get("OMP_NUM_THREADS"), torch_threads()))
                    if isinstance(executor, DistributedExecutor)
                    else {}
                )
                results.append(
                    {
                        "execution": name,
                        "worker_omp_and_torch_threads": sorted(probe.values()),
                        "workers": abs(workers or 0),
                        "cores": cores,
                        "chips": plan.n_chips,
                        "startup_s": round(time.perf_counter() - start, 2),
                        "map_s": [],
                        "load_average_before_map": [],
                        "load_average_before_start": [round(v, 2) for v in load],
                    }
                )
            for repeat in range(args.repeats):
                for row, executor in zip(results, executors):
                    out = Path(tmp) / f"{len(row['map_s'])}-{row['workers']}-{repeat}-{id(executor)}.gpkg"
                    row["load_average_before_map"].append(round(os.getloadavg()[0], 2))
                    begin = time.perf_counter()
                    summary = map_to_file(plan, out, progress_mode="none", executor=executor)
                    row["map_s"].append(time.perf_counter() - begin)
                    assert summary.n_classified + summary.n_skipped == plan.n_chips
                    print(row["execution"], repeat, round(row["map_s"][-1], 2), flush=True)
        for row in results:
            row["chips_per_s"] = plan.n_chips / min(row["map_s"])
            print(json.dumps(row), flush=True)
    base = results[0]["chips_per_s"]
    for row in results:
        row["relative_to_in_process"] = row["chips_per_s"] / base
    args.json.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:])
    document = {
        "machine": machine(),
        "command": command.strip(),
        "load_average_after": os.getloadavg(),
        "results": results,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()

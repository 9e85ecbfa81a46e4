"""Start-up of the command line (issue 18): time to the first chip of ``geobimors map`` with the bundled model.

    python benchmarks/bench_startup.py [--repeats 5] [--json docs/benchmarks/startup.json]

Each measurement is a fresh process, timed by this script from just before it is started:

* ``geobimors --help``: until the process exits;
* ``geobimors map`` on the sample Landsat scene (bundled mini model, ``--progress jsonl``):
  until the first ``progress`` event (the first batch of 32 chips classified) arrives on
  stderr, and until the process exits; with the cache of label text features warm (a user's
  second run with the same labels: the warm-up run fills it) and cold (an empty cache folder,
  as the very first run with new labels);
* ``python -c "import torch"``: the floor any run that classifies pays, measured in the same
  conditions (it shows how loaded the machine was).

The best and the median of ``--repeats`` runs are reported. Set ``PYTHONPATH`` to a checkout to
measure that code (the same venv's packages).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine

BIN = Path(sys.executable).parent


def _exit_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _map_times(out: Path, cache: Path) -> tuple[float, float]:
    """(seconds to the first progress event, seconds to exit) of one `geobimors map` run."""
    command = [str(BIN / "geobimors"), "map", str(ROOT / "sample_data" / "L7_ETMs.tif")]
    command += ["--labels", str(ROOT / "sample_data" / "labels.txt"), "--bands", "3,2,1"]
    command += ["--progress", "jsonl", "-o", str(out), "--overwrite"]
    start = time.perf_counter()
    env = {**os.environ, "GEOBIMORS_CACHE_DIR": str(cache)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    first = None
    for line in process.stderr:
        if first is None and line.startswith("{") and json.loads(line).get("event") == "progress":
            first = time.perf_counter() - start
    if process.wait() != 0 or first is None:
        raise SystemExit(f"geobimors map failed (exit {process.returncode})")
    return first, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "startup.json")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {
        "help": [],
        "first_chip": [],
        "map_exit": [],
        "first_chip_cold_cache": [],
        "import_torch": [],
    }
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        _map_times(Path(tmp) / "warm.gpkg", cache)  # file-system caches warm, as for a user's second command
        for repeat in range(args.repeats):
            runs["help"].append(_exit_time([str(BIN / "geobimors"), "--help"]))
            first, done = _map_times(Path(tmp) / f"{repeat}.gpkg", cache)
            runs["first_chip"].append(first)
            runs["map_exit"].append(done)
            cold, _ = _map_times(Path(tmp) / f"cold-{repeat}.gpkg", Path(tmp) / f"cache-{repeat}")
            runs["first_chip_cold_cache"].append(cold)
            runs["import_torch"].append(_exit_time([sys.executable, "-c", "import torch"]))
    summary = {
        name: {
            "best_s": round(min(v), 2),
            "median_s": round(statistics.median(v), 2),
            "runs_s": [round(x, 2) for x in v],
        }
        for name, v in runs.items()
    }
    load = os.getloadavg()
    report = {
        "machine": machine(),
        "load_average_1_5_15": load,
        "load_average_before": load_before,
        "code": os.environ.get("PYTHONPATH", "installed"),
        **summary,
    }
    print(json.dumps(report, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""What captions cost a map run (issue 15: "captioning must not dominate a map run").

    .venv/bin/python benchmarks/bench_map_captions.py [--json docs/benchmarks/map-captions.json]

`geobimors map` with the bundled model on a 32 x 32-chip region (1,024 chips of 64 px at 10 m) of the
6,144 px mosaic of the sample scenes, as a user runs it (a fresh process, an empty caption cache):
without captions, and with `--captions mini` at beam widths 1, 2 and 4. "caption share" is the part of
the captioned run's wall time that the captions add: 1 - plain / captioned. Best of ``--repeats``
runs of each, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rasterio.windows import Window

from common import DATA, ROOT, machine, make_mosaic, window_vrt

LABELS = ROOT / "sample_data" / "labels.txt"


def run(region: Path, work: Path, extra: list[str]) -> float:
    """Seconds of one `geobimors map` process (fresh caption cache)."""
    out = work / f"map-{time.monotonic_ns()}.gpkg"
    env = {**os.environ, "GEOBIMORS_CACHE_DIR": tempfile.mkdtemp(dir=work)}
    command = [sys.executable, "-m", "geobimors.cli", "map", str(region), "-l", str(LABELS), "-o", str(out), "-q"]
    start = time.perf_counter()
    subprocess.run([*command, *extra], check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "map-captions.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-map-captions-"))
    scene = make_mosaic(DATA / "mosaic-6144.tif", size=6144)
    region = window_vrt(scene, Window(0, 0, 32 * 64, 32 * 64), work / "region.vrt")
    variants: dict[str, list[str]] = {"plain": []}
    for beams in args.beams:
        variants[f"captions mini, beam {beams}"] = ["--captions", "mini", "--num-beams", str(beams)]
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, extra in variants.items():
            seconds[name].append(run(region, work, extra))
    plain = min(seconds["plain"])
    rows = [
        {
            "run": name,
            "seconds": min(times),
            "chips_per_s": 1024 / min(times),
            "caption_share": None if name == "plain" else 1 - plain / min(times),
            "all_seconds": times,
        }
        for name, times in seconds.items()
    ]
    for row in rows:
        share = "" if row["caption_share"] is None else f", captions {row['caption_share']:.0%} of the run"
        print(f"{row['run']}: {row['seconds']:.1f} s, {row['chips_per_s']:.0f} chips/s{share}")
    facts = machine() | {"load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]}
    args.json.write_text(json.dumps({"machine": facts, "chips": 1024, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Cost of the hostile-input guards (issue 16): GDAL network lockdown around chip reads, VRT inspection.

Writes docs/benchmarks/guard.json. Run from the repository root:

    .venv/bin/python benchmarks/bench_guard.py
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from geobimors.raster.grid import GridSpec, build_grid  # noqa: E402
from geobimors.raster.read import ChipReader, ReadSpec  # noqa: E402
from geobimors.raster.safety import check_local_dataset  # noqa: E402
from geobimors.raster.scene import open_scene  # noqa: E402

from rasters import make_geotiff, random_rgb  # noqa: E402


def best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    tile = make_geotiff(tmp / "tile.tif", random_rgb(2048, 2048), tiled=True, blockxsize=256, blockysize=256)
    info = open_scene(tile)
    grid = build_grid(info, GridSpec.parse(224))
    chips = list(grid.chips())
    spec = ReadSpec(info.path, grid, (1, 2, 3), None)

    def read(allow: bool) -> None:
        reader = ChipReader(replace(spec, allow_network=allow))
        for start in range(0, len(chips), 32):
            reader.read_batch(chips[start : start + 32])

    read(True)
    guarded, unguarded = best(lambda: read(False)), best(lambda: read(True))
    # A mosaic VRT of 1,000 local sources (the same tile): inspection opens each distinct source once.
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="0">{tmp}/t{i}.tif</SourceFilename><SourceBand>1</SourceBand>'
        f'<DstRect xOff="{(i % 40) * 2048}" yOff="{(i // 40) * 2048}" xSize="2048" ySize="2048"/></SimpleSource>'
        for i in range(1000)
    )
    small = make_geotiff(tmp / "t0.tif", np.zeros((1, 64, 64), np.uint8))
    for i in range(1, 1000):
        (tmp / f"t{i}.tif").symlink_to(small)
    vrt = tmp / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="81920" rasterYSize="51200"><SRS>EPSG:32632</SRS>'
        f'<GeoTransform>500000,10,0,5000000,0,-10</GeoTransform><VRTRasterBand dataType="Byte" band="1">'
        f"{sources}</VRTRasterBand></VRTDataset>"
    )
    inspect = best(lambda: check_local_dataset(str(vrt)))
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, shared 2-core AMD EPYC, 24 GB, no GPU",
        "chips": len(chips),
        "chip_px": 224,
        "read_seconds_guarded": round(guarded, 3),
        "read_seconds_unguarded": round(unguarded, 3),
        "guard_overhead_percent": round(100 * (guarded - unguarded) / unguarded, 1),
        "inspect_vrt_1000_sources_seconds": round(inspect, 3),
    }
    out = ROOT / "docs" / "benchmarks" / "guard.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

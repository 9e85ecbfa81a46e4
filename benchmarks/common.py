"""Helpers shared by the benchmarks: machine facts, window VRTs, the large mosaic scene."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
SAMPLES = [
    (ROOT / "sample_data" / "cogeo.tif", (1, 2, 3)),
    (ROOT / "sample_data" / "L7_ETMs.tif", (3, 2, 1)),
    (ROOT / "sample_data" / "RGB.byte.tif", (1, 2, 3)),
]


def run_record(script: str) -> dict[str, object]:
    """The command (with this run's arguments), UTC date and machine (with its load) that a report starts with."""
    return {
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": {**machine(), "load_average": os.getloadavg()},
    }


def machine() -> dict[str, object]:
    """Facts about the machine a benchmark ran on."""
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@contextlib.contextmanager
def recorded_reads() -> Iterator[set[Path]]:
    """Record every image file that :mod:`geobimors.train.data` loads inside the block (for :func:`pack_data`).

    Image folders are read on demand (:class:`geobimors.raster.images.ImageFiles`), but every file a data
    set holds has its header checked when it is loaded: that check is what is recorded.
    """
    import geobimors.raster.images as images

    seen: set[Path] = set()
    original = images.image_size

    def header(path: Any) -> tuple[int, int]:
        seen.add(Path(path))
        return original(path)

    images.image_size = header
    try:
        yield seen
    finally:
        images.image_size = original


def pack_data(shared: Path, needed: set[Path], out: Path) -> None:
    """Write ``out`` (.tar.xz): the ``needed`` files of ``shared``, every other file of their datasets empty.

    For running a benchmark on a machine without the shared data (a lent GPU): the empty
    placeholders keep folder listings, and with them every seeded choice of images, the same.
    A dataset is a top-level folder of ``shared`` that holds a needed file.
    """
    root = shared.resolve()
    wanted = {path.resolve() for path in needed}
    with tarfile.open(out, "w:xz") as tar:
        for folder in sorted({path.relative_to(root).parts[0] for path in wanted}):
            for path in sorted((shared / folder).rglob("*")):
                if path.is_file():
                    arcname = str(path.relative_to(shared))
                    if path.resolve() in wanted:
                        tar.add(path, arcname)
                    else:
                        tar.addfile(tarfile.TarInfo(arcname))
    print(json.dumps({"pack": str(out), "files": len(wanted), "bytes": out.stat().st_size}))


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON report atomically (a temporary file renamed into place) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def window_vrt(path: Path, window: Window, out: Path) -> Path:
    """Write a VRT exposing one window of a raster (reads go to the source file)."""
    with rasterio.open(path) as ds:
        transform = ds.window_transform(window)
        bands = []
        for band in range(1, ds.count + 1):
            bands.append(
                f'<VRTRasterBand dataType="Byte" band="{band}"><ColorInterp>{ds.colorinterp[band - 1].name}'
                f'</ColorInterp><SimpleSource><SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>'
                f"<SourceBand>{band}</SourceBand>"
                f'<SrcRect xOff="{window.col_off}" yOff="{window.row_off}" '
                f'xSize="{window.width}" ySize="{window.height}"/>'
                f'<DstRect xOff="0" yOff="0" xSize="{window.width}" ySize="{window.height}"/>'
                "</SimpleSource></VRTRasterBand>"
            )
        xml = (
            f'<VRTDataset rasterXSize="{window.width}" rasterYSize="{window.height}">'
            f"<SRS>{escape(ds.crs.to_wkt())}</SRS><GeoTransform>{', '.join(map(str, transform.to_gdal()))}"
            f"</GeoTransform>{''.join(bands)}</VRTDataset>"
        )
    out.write_text(xml)
    return out


def _tiles() -> list[np.ndarray]:
    """1024 x 1024 RGB tiles made from the sample scenes (with flips and rotations for variety)."""
    tiles = []
    for path, bands in SAMPLES:
        with rasterio.open(path) as ds:
            rgb = ds.read(list(bands)).transpose(1, 2, 0)
        image = Image.fromarray(np.ascontiguousarray(rgb)).resize((1024, 1024), Image.BILINEAR)
        base = np.asarray(image)
        tiles += [base, np.rot90(base).copy(), base[:, ::-1].copy(), base[::-1].copy()]
    return tiles


def make_mosaic(path: Path, size: int = 20_000, pixel: float = 10.0) -> Path:
    """Build a size x size RGB Cloud-Optimized GeoTIFF (JPEG, overviews) from the sample scenes."""
    from rasterio.shutil import copy as rio_copy

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".stage.tif")
    tiles = _tiles()
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs=CRS.from_epsg(32632),
        transform=Affine(pixel, 0, 400_000, 0, -pixel, 5_500_000),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="DEFLATE",
        BIGTIFF="YES",
    )
    rng = np.random.default_rng(0)
    with rasterio.open(tmp, "w", **profile) as ds:
        ds.colorinterp = [
            rasterio.enums.ColorInterp.red,
            rasterio.enums.ColorInterp.green,
            rasterio.enums.ColorInterp.blue,
        ]
        for row in range(0, size, 1024):
            for col in range(0, size, 1024):
                tile = tiles[rng.integers(len(tiles))]
                h, w = min(1024, size - row), min(1024, size - col)
                ds.write(tile[:h, :w].transpose(2, 0, 1), window=Window(col, row, w, h))
    rio_copy(tmp, path, driver="COG", COMPRESS="JPEG", QUALITY=90, BLOCKSIZE=512, OVERVIEWS="AUTO", BIGTIFF="YES")
    tmp.unlink()
    return path

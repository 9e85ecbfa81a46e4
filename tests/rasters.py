"""Small generated GeoTIFFs for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

UTM32N = CRS.from_epsg(32632)


def make_geotiff(
    path: Path,
    data: np.ndarray,
    transform: Affine | None = None,
    crs: CRS | str | None = UTM32N,
    nodata: float | None = None,
    colorinterp: list[Any] | None = None,
    **profile: Any,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF and return its path."""
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    transform = transform or Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
    kwargs = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=data.dtype, transform=transform, nodata=nodata
    )
    if crs is not None:
        kwargs["crs"] = crs
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as ds:
        ds.write(data)
        if colorinterp is not None:
            ds.colorinterp = colorinterp
    return path


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB data (3, height, width)."""
    return np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)

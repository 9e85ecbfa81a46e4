"""Similarity rasters: one score per chip cell of a store's chip grid, as a Cloud-Optimized GeoTIFF."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy

from geobimors.errors import OutputError, RunError


def check_raster_output(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check that a GeoTIFF output can be written, before any work is done."""
    out = Path(path).expanduser()
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise OutputError(f"--raster {out} must be a GeoTIFF (.tif)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"--raster directory {parent} does not exist or is not writable")
    if out.exists() and not overwrite:
        raise OutputError(f"--raster {out} already exists; pass --overwrite to replace it")
    return out


def write_similarity_raster(
    path: str | os.PathLike[str],
    grids: Mapping[str, np.ndarray],
    transform: Affine,
    crs: Any,
    overwrite: bool = False,
) -> Path:
    """Write one float32 band of scores per query (band description = the query), NaN where no chip.

    The file is a COG (deflate, internal overviews), written to a temporary name and renamed.
    """
    out = check_raster_output(path, overwrite)
    names = list(grids)
    first = grids[names[0]]
    profile = {
        "driver": "GTiff",
        "width": first.shape[1],
        "height": first.shape[0],
        "count": len(names),
        "dtype": "float32",
        "nodata": float("nan"),
        "transform": transform,
        "crs": crs,
    }
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.tif")
    try:
        with MemoryFile() as memory:
            with memory.open(**profile) as dataset:
                for band, name in enumerate(names, start=1):
                    dataset.write(grids[name].astype(np.float32), band)
                    dataset.set_band_description(band, name[:200])
                dataset.update_tags(source="geobimors search", unit="cosine similarity")
            with memory.open() as dataset:
                rio_copy(
                    dataset, str(tmp), driver="COG", compress="DEFLATE", predictor="3", overview_resampling="average"
                )
        if out.exists() and not overwrite:
            raise OutputError(f"--raster {out} appeared while searching; not replacing it")
        os.replace(tmp, out)
    except (OSError, rasterio.errors.RasterioError) as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {out}: {str(exc).splitlines()[0]}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out

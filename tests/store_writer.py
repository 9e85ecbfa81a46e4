"""TEMPORARY test-only writer of the store contract format (dropped when the store branch lands)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from affine import Affine
from rasterio.crs import CRS

TRANSFORM = Affine(10, 0, 500000, 0, -10, 5000000)
UTM32N = CRS.from_epsg(32632)


def write_store(
    path: Path,
    embeddings: np.ndarray,
    n_cols: int,
    model: str = "tiny",
    fingerprint: str = "0" * 16,
    transform: Affine = TRANSFORM,
    chip: int = 64,
    crs: CRS = UTM32N,
    captions: list[str] | None = None,
    caption_embeddings: np.ndarray | None = None,
    row_group_size: int = 50,
) -> Path:
    n, dim = embeddings.shape
    rows = (np.arange(n) // n_cols).astype(np.int32)
    cols = (np.arange(n) % n_cols).astype(np.int32)
    chip_t = transform * Affine.scale(chip)
    x0 = np.array([(chip_t * (c, r))[0] for r, c in zip(rows, cols)])
    y0 = np.array([(chip_t * (c, r))[1] for r, c in zip(rows, cols)])
    x1, y1 = x0 + chip_t.a, y0 + chip_t.e
    polys = shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1))
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    ids = [hashlib.sha256(f"{path.name}-{r}-{c}".encode()).hexdigest()[:16] for r, c in zip(rows, cols)]
    columns = {
        "chip_id": pa.array(ids),
        "scene": pa.array([str(path)] * n),
        "row": pa.array(rows),
        "col": pa.array(cols),
        "pixel_bbox": pa.FixedSizeListArray.from_arrays(
            pa.array(
                np.stack([cols * chip, rows * chip, cols * chip + chip, rows * chip + chip], 1).ravel().astype(np.int32)
            ),
            4,
        ),
        "geometry": pa.array(shapely.to_wkb(polys).tolist(), pa.binary()),
        "bbox": pa.StructArray.from_arrays(
            [pa.array(shapely.bounds(polys)[:, i]) for i in range(4)], ["xmin", "ymin", "xmax", "ymax"]
        ),
        "centre_lat": pa.array(np.zeros(n)),
        "centre_lon": pa.array(np.zeros(n)),
        "valid_fraction": pa.array(np.ones(n, np.float32)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(unit.astype(np.float16).ravel()), dim),
    }
    if captions is not None:
        columns["caption"] = pa.array(captions)
    if caption_embeddings is not None:
        columns["caption_embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(caption_embeddings.astype(np.float16).ravel()), caption_embeddings.shape[1]
        )
    table = pa.table(columns)
    bounds = shapely.total_bounds(polys).tolist()
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": json.loads(crs.to_json()) if hasattr(crs, "to_json") else None,
                "bbox": bounds,
                "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
            }
        },
    }
    n_rows = int(rows.max()) + 1
    meta = {
        "format_version": 1,
        "model": model,
        "model_fingerprint": fingerprint,
        "embedding_dim": dim,
        "dtype": "float16",
        "grid": {"crs": crs.to_wkt(), "transform": list(chip_t)[:6], "n_rows": n_rows, "n_cols": n_cols},
        "complete": True,
    }
    table = table.replace_schema_metadata({"geo": json.dumps(geo), "geobimors": json.dumps(meta)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path

"""Chips of several scenes on one map: exact reprojection and where scenes overlap, one chip per place.

The overlap rule (``geobimors map A B ...`` without ``--keep-overlaps``):

* two chips of *different* scenes compete when the centre of one lies inside (or on the edge of)
  the other, in the output CRS; chips of one scene never compete (their grid is the user's choice);
* chips are ranked by their share of valid pixels (``valid_fraction``: scenes of different
  resolutions compete fairly), then by scene order (the order of the arguments), then by grid
  position (row-major);
* in rank order, a chip is kept unless it competes with a chip already kept; so of two copies of a
  scene only the first is kept, and at a border where a scene has nodata the other scene's chips
  with more valid pixels take over.

Every place covered by a dropped chip's centre is mapped by a kept chip of another scene; kept
chips of different scenes never hold each other's centre (they may still overlap by less than half
a chip, as chips of different grids do).
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely
from rasterio.crs import CRS

#: Segments per chip edge when polygons are reprojected (their edges become curves in the output CRS).
SEGMENTS_PER_EDGE = 8


def to_output_crs(frame: gpd.GeoDataFrame, crs: CRS | None) -> gpd.GeoDataFrame:
    """``frame`` in ``crs``: edges densified first, so reprojected polygons keep the pixels they cover.

    Frames without a CRS, or already in ``crs``, are returned unchanged.
    """
    if crs is None or frame.crs is None or CRS.from_user_input(frame.crs) == crs:
        return frame
    if len(frame) == 0:
        return frame.set_crs(crs, allow_override=True)
    geoms = frame.geometry.to_numpy()
    step = shapely.length(geoms) / (4 * SEGMENTS_PER_EDGE)
    dense = shapely.segmentize(geoms, np.where(step > 0, step, 1.0))
    return frame.set_geometry(gpd.GeoSeries(dense, index=frame.index, crs=frame.crs)).to_crs(crs)


def overlap_losers(chips: gpd.GeoDataFrame) -> np.ndarray:
    """Rows of ``chips`` that another scene's chip maps instead (the rule in the module docs).

    Args:
        chips: one row per classified chip of every scene, in one CRS: ``scene_index`` (rank of
            the scene), ``chip`` (grid position, row-major), ``valid_fraction`` and the polygon.

    Returns:
        Indexes (positions) of the chips to leave out.
    """
    n = len(chips)
    if n == 0 or chips["scene_index"].nunique() < 2:
        return np.zeros(0, dtype=np.int64)
    scene = chips["scene_index"].to_numpy()
    geoms = chips.geometry.to_numpy()
    centres = shapely.centroid(geoms)
    inside, holder = shapely.STRtree(geoms).query(centres, predicate="intersects")
    other = scene[inside] != scene[holder]
    a = np.concatenate([inside[other], holder[other]])
    b = np.concatenate([holder[other], inside[other]])
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((chips["chip"].to_numpy(), scene, -chips["valid_fraction"].to_numpy(np.float64)))
    return _greedy(order, a, b, n)


def _greedy(order: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Visit chips in rank order; drop one that competes with a chip kept before it."""
    by_a = np.argsort(a, kind="stable")
    a, b = a[by_a], b[by_a]
    starts = np.searchsorted(a, np.arange(n + 1))
    contested = np.zeros(n, dtype=bool)
    contested[a] = True
    kept = ~contested  # chips no other scene competes with are kept
    lost = []
    for i in order[contested[order]]:
        if kept[b[starts[i] : starts[i + 1]]].any():
            lost.append(i)
        else:
            kept[i] = True
    return np.array(sorted(lost), dtype=np.int64)

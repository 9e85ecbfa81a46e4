"""The ``.geobimors`` accessors on xarray objects (registered by ``import geobimors``).

This module imports only xarray; the heavy machinery loads on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import xarray as xr

if TYPE_CHECKING:
    import geopandas as gpd

    from geobimors.labels import Label


@xr.register_dataarray_accessor("geobimors")
class GeobimorsDataArrayAccessor:
    """``da.geobimors.classify(labels=[...])``: classify a scene DataArray (see :func:`geobimors.classify`)."""

    def __init__(self, data: xr.DataArray) -> None:
        self._data = data

    def classify(self, labels: Sequence[str | Label] = (), **options: Any) -> xr.Dataset:
        """Classify every chip; options as in :func:`geobimors.xarray.classify`."""
        from geobimors.xarray import classify

        return classify(self._data, labels, **options)


@xr.register_dataset_accessor("geobimors")
class GeobimorsDatasetAccessor:
    """``ds.geobimors.to_geodataframe()``: chip polygons of a classify() result."""

    def __init__(self, dataset: xr.Dataset) -> None:
        self._dataset = dataset

    def to_geodataframe(self, top_k: int = 3) -> gpd.GeoDataFrame:
        """Chip polygons with labels, as ``geobimors map`` writes them."""
        from geobimors.xarray import to_geodataframe

        return to_geodataframe(self._dataset, top_k)

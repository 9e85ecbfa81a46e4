"""Other tools open the embeddings store as it is: geopandas, DuckDB, GDAL (when its Parquet driver exists)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from rasterio.crs import CRS
from test_embeddings_store import _meta, _table

from geobimors.embeddings.store import open_store, write_store


@pytest.fixture()
def store_path(rgb_scene: Path, tmp_path: Path) -> Path:
    meta, grid = _meta(rgb_scene, dtype="float16", dim=8)
    return write_store(tmp_path / "scene.parquet", meta, [_table(meta, grid)[0]])


def test_geopandas_reads_geometry_crs_and_embeddings(store_path: Path) -> None:
    frame = gpd.read_parquet(store_path)
    assert frame.crs == CRS.from_epsg(32632) and frame.geometry.name == "geometry"
    store = open_store(store_path)
    expected = store.embeddings_of(store.read_table(["embedding"]))
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_numpy()).astype(np.float32), expected)
    # geopandas reads the bbox covering column as GeoParquet 1.1 metadata, and filters with it.
    assert "bbox" not in frame.columns
    subset = gpd.read_parquet(store_path, bbox=(500000, 4999700, 500300, 5000000))
    assert 0 < len(subset) < len(frame)


def test_duckdb_reads_the_store(store_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    rows = con.execute(
        "SELECT chip_id, row, col, bbox.xmin, embedding, geometry FROM read_parquet(?) "
        "WHERE bbox.xmax <= 500640 ORDER BY row, col",
        [str(store_path)],
    ).fetchall()
    frame = gpd.read_parquet(store_path).sort_values(["row", "col"])
    left = frame[frame.geometry.bounds["maxx"] <= 500640]
    assert [r[0] for r in rows] == left["chip_id"].tolist() and len(rows) == 6  # two chip columns of three rows
    np.testing.assert_allclose(np.array([r[4] for r in rows]), np.stack(left["embedding"]).astype(np.float32))
    first = rows[0][5]
    polygon = shapely.from_wkb(first if isinstance(first, bytes) else bytes(first))
    assert polygon.equals(left.geometry.iloc[0])


def test_lonboard_maps_the_store_as_it_is(store_path: Path) -> None:
    lonboard = pytest.importorskip("lonboard")
    import pyarrow.parquet as pq

    with pytest.warns(UserWarning, match="EPSG:4326"):  # lonboard reprojects from the store's UTM itself
        widget = lonboard.viz(pq.read_table(store_path))  # the Arrow table, GeoParquet metadata and all
    (layer,) = widget.layers
    assert isinstance(layer, lonboard.PolygonLayer) and layer.table.num_rows == 12
    first_x = layer.table["geometry"].chunk(0).to_pylist()[0][0][0][0]  # polygon 0, ring 0, vertex 0
    assert 8.9 < first_x < 9.1  # reprojected: EPSG:32632 easting 500000 is longitude 9 E


def test_gdal_opens_the_store_when_it_has_a_parquet_driver(store_path: Path) -> None:
    if "Parquet" in pyogrio.list_drivers():
        info = pyogrio.read_info(store_path)
        assert info["features"] == 12 and "EPSG" in str(info["crs"]) and info["geometry_type"] == "Polygon"
        return
    ogrinfo = shutil.which("ogrinfo")
    if ogrinfo is not None:
        formats = subprocess.run([ogrinfo, "--formats"], capture_output=True, text=True).stdout
        if "Parquet" in formats:
            out = subprocess.run([ogrinfo, "-so", "-al", str(store_path)], capture_output=True, text=True).stdout
            assert "Feature Count: 12" in out and "32632" in out
            return
    pytest.skip("neither pyogrio's GDAL nor the system GDAL has the (Geo)Parquet driver (GDAL >= 3.5 with Arrow)")

"""Partitioned embeddings stores (a directory, glob or list of store files) read as one store."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from affine import Affine
from pyproj import Transformer

import geobimors
from geobimors.embeddings.dataset import DENSIFY, StoreSet, open_stores
from geobimors.embeddings.index import build_index, index_paths
from geobimors.embeddings.search import search
from geobimors.embeddings.store import open_store
from geobimors.errors import InputError

from cli_helpers import assert_one_line_error, run_cli
from rasters import make_geotiff, random_rgb

# Scene b lies in UTM 33N: a set of a and b mixes two CRSs.
UTM33_TRANSFORM = Affine(10.0, 0.0, 300_000.0, 0.0, -10.0, 5_000_000.0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    """DIR/a.parquet (UTM 32N) and DIR/b.parquet (UTM 32N, another scene), 48 chips each; DIR/c in UTM 33N."""
    root = tmp_path_factory.mktemp("sets")
    same = root / "same"
    same.mkdir()
    a = make_geotiff(root / "a.tif", random_rgb(96, 128, seed=1))
    b = make_geotiff(
        root / "b.tif", random_rgb(96, 128, seed=2), transform=Affine(10.0, 0.0, 502_000.0, 0.0, -10.0, 5_000_000.0)
    )
    c = make_geotiff(root / "c.tif", random_rgb(96, 128, seed=4), transform=UTM33_TRANSFORM, crs="EPSG:32633")
    for scene, name in ((a, "a"), (b, "b"), (c, "c")):
        geobimors.embed(scene, root / f"{name}.parquet", model=tiny_model, chip_size="16", progress="none")
    shutil.copy(root / "a.parquet", same / "a.parquet")
    shutil.copy(root / "b.parquet", same / "b.parquet")
    mixed = root / "mixed"
    mixed.mkdir()
    shutil.copy(root / "a.parquet", mixed / "a.parquet")
    shutil.copy(root / "c.parquet", mixed / "c.parquet")
    return root


def _embeddings(path: Path) -> tuple[np.ndarray, gpd.GeoDataFrame]:
    store = open_store(path)
    frame = store.to_geodataframe(["chip_id", "scene", "row", "col", "centre_lon", "centre_lat"])
    return np.concatenate([store.embeddings_of(b) for b in store.iter_batches(["embedding"])]), frame


def test_a_directory_searches_as_one_store(stores: Path, tiny_model: str) -> None:
    ea, fa = _embeddings(stores / "a.parquet")
    eb, fb = _embeddings(stores / "b.parquet")
    embeddings, frame = np.concatenate([ea, eb]), pd.concat([fa, fb], ignore_index=True)
    opened = open_stores(stores / "same")
    assert isinstance(opened, StoreSet) and opened.n_rows == 96 and opened.crs == fa.crs
    like = fb["chip_id"].iloc[7]
    result = search(stores / "same", "forest", like=[like], k=30, model=tiny_model)
    assert result.method == "exact" and result.n_rows == 96
    hits = result.frame[result.frame["query"] == "like"]
    unit = eb[7] / np.linalg.norm(eb[7])
    order = np.argsort(-(embeddings @ unit), kind="stable")[:30]
    assert hits["chip_id"].tolist() == frame["chip_id"].iloc[order].tolist()
    # Hits carry their scene; both scenes appear in a whole-set ranking.
    assert hits["scene"].tolist() == frame["scene"].iloc[order].tolist()
    assert set(result.frame["scene"]) == {str(stores / "a.tif"), str(stores / "b.tif")}
    assert hits.crs == fa.crs
    expected = frame.set_index("chip_id").geometry
    assert all(g.equals_exact(expected[c], 0) for c, g in zip(hits["chip_id"], hits.geometry))
    # A glob and an @list name the same set.
    glob = search(str(stores / "same" / "*.parquet"), like=[like], k=30).frame
    listing = stores / "list.txt"
    listing.write_text("# two scenes\nsame/a.parquet\nsame/b.parquet\n")
    listed = search(f"@{listing}", like=[like], k=30).frame
    assert glob["chip_id"].tolist() == listed["chip_id"].tolist() == hits["chip_id"].tolist()


def test_relabelling_a_directory_equals_relabelling_each_file(
    capsys: pytest.CaptureFixture[str], stores: Path, tiny_model: str, tmp_path: Path
) -> None:
    parts = [geobimors.classify_embeddings(stores / f"{n}.parquet", ["forest", "water", "fields"]) for n in "ab"]
    whole = geobimors.classify_embeddings(stores / "same", ["forest", "water", "fields"])
    assert whole["scene"].tolist() == [str(stores / "a.tif")] * 48 + [str(stores / "b.tif")] * 48
    expected = pd.concat(parts, ignore_index=True)
    assert whole.drop(columns=["scene", "geometry"]).equals(expected.drop(columns="geometry"))
    assert whole.geometry.geom_equals_exact(expected.geometry, 0).all()
    labels = tmp_path / "labels.txt"
    labels.write_text("forest\nwater\nfields\n")
    out = tmp_path / "relabelled.gpkg"
    result = run_cli(capsys, "map", "--from-embeddings", stores / "same", "-l", labels, "-o", out, "--regions")
    assert result.exit_code == 0, result.err
    assert "96 labelled" in result.out
    written = gpd.read_file(out, layer="chips")
    assert written["scene"].tolist() == whole["scene"].tolist() and written["label"].tolist() == whole["label"].tolist()
    assert len(gpd.read_file(out, layer="regions")) >= 1


def test_stores_in_different_crss_are_reprojected_exactly(stores: Path, tiny_model: str) -> None:
    opened = open_stores(stores / "mixed")
    assert isinstance(opened, StoreSet) and opened.crs == "EPSG:4326" and opened.mixed_crs()
    _, fc = _embeddings(stores / "c.parquet")
    hits = search(stores / "mixed", like=[fc["chip_id"].iloc[0]], k=96).frame
    assert hits.crs == "EPSG:4326" and len(hits) == 96
    from_c = hits[hits["scene"] == str(stores / "c.tif")].set_index("chip_id")
    back = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    for chip_id, original in zip(fc["chip_id"], fc.geometry):
        polygon = from_c.geometry[chip_id]
        # Densified: every edge has DENSIFY pieces, and every vertex, taken back, lies on the chip's edge.
        assert len(polygon.exterior.coords) == 4 * DENSIFY + 1
        x, y = back.transform(*np.asarray(polygon.exterior.coords).T)
        assert shapely.distance(shapely.points(x, y), original.exterior).max() < 1e-6
    # The chip centres (stored in lon/lat) lie inside their reprojected footprints.
    centres = shapely.points(fc["centre_lon"], fc["centre_lat"])
    assert shapely.contains(from_c.geometry[fc["chip_id"]].to_numpy(), centres).all()
    # --within in the set's CRS (lon/lat) picks chips of the scene it covers.
    xmin, ymin, xmax, ymax = from_c.total_bounds
    inside = search(stores / "mixed", like=[fc["chip_id"].iloc[0]], k=96, within=f"{xmin},{ymin},{xmax},{ymax}")
    assert set(inside.frame["scene"]) == {str(stores / "c.tif")} and len(inside.frame) == 48
    relabelled = geobimors.classify_embeddings(stores / "mixed", ["forest", "water"])
    assert relabelled.crs == "EPSG:4326" and len(relabelled) == 96


def test_an_index_over_a_directory(capsys: pytest.CaptureFixture[str], stores: Path, tmp_path: Path) -> None:
    directory = tmp_path / "set"
    shutil.copytree(stores / "same", directory)
    result = run_cli(capsys, "index", directory, "--nlist", "4", "--nprobe", "4")
    assert result.exit_code == 0, result.err
    assert index_paths(directory)[0] == tmp_path / "set.index" and (tmp_path / "set.index").exists()
    like = open_stores(directory).to_geodataframe(["chip_id"])["chip_id"].iloc[60]
    indexed = search(directory, like=[like], k=20)
    exact = search(directory, like=[like], k=20, use_index=False)
    assert indexed.method == "index (faiss)" and exact.method == "exact"
    # Every cell is probed: the index finds exactly the exact hits, with their scenes.
    assert indexed.frame["chip_id"].tolist() == exact.frame["chip_id"].tolist()
    assert indexed.frame["scene"].tolist() == exact.frame["scene"].tolist()
    # A file added to the directory makes the index stale: noted, exact search.
    shutil.copy(stores / "c.parquet", directory / "c.parquet")
    stale = search(directory, like=[like], k=20)
    assert stale.method == "exact" and any("stale" in n for n in stale.notes)
    # A glob has no place for an index.
    with pytest.raises(InputError, match="put the files in one directory"):
        build_index(open_stores(str(directory / "*.parquet")))  # type: ignore[arg-type]


def test_bad_sets(capsys: pytest.CaptureFixture[str], stores: Path, tmp_path: Path, blind_tiny_model: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli(capsys, "search", empty, "forest"), 2, "holds no embeddings store")
    pattern = str(tmp_path / "nothing-*.parquet")
    assert_one_line_error(run_cli(capsys, "search", pattern, "forest"), 2, "no file matches")
    # Another model's weights: both files named.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(stores / "a.parquet", other / "a.parquet")
    scene = make_geotiff(tmp_path / "d.tif", random_rgb(32, 32, seed=5))
    geobimors.embed(scene, other / "d.parquet", model=blind_tiny_model, chip_size="16", progress="none")
    result = run_cli(capsys, "search", other, "forest")
    assert_one_line_error(result, 2, "a.parquet", "d.parquet", "different settings", "weights")
    # Other chip settings.
    chips = tmp_path / "chips"
    chips.mkdir()
    shutil.copy(stores / "a.parquet", chips / "a.parquet")
    geobimors.embed(stores / "b.tif", chips / "b.parquet", model=blind_tiny_model, chip_size="32", progress="none")
    assert_one_line_error(run_cli(capsys, "map", "--from-embeddings", chips, "-l", "x"), 2, "different settings")
    # An unfinished store in the directory.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(stores / "same", unfinished)
    (unfinished / "c.parquet.partial").mkdir()
    assert_one_line_error(run_cli(capsys, "search", unfinished, "forest"), 2, "not finished", "c.parquet")
    # A file listed twice.
    listing = tmp_path / "twice.txt"
    listing.write_text(f"{stores / 'a.parquet'}\n{stores / 'a.parquet'}\n")
    assert_one_line_error(run_cli(capsys, "search", f"@{listing}", "forest"), 2, "named twice")
    # A similarity raster needs one grid.
    raster = tmp_path / "heat.tif"
    result = run_cli(capsys, "search", stores / "same", "forest", "--raster", raster)
    assert_one_line_error(result, 2, "--raster needs one store file")
    assert not raster.exists()

"""The embeddings store file format: schema, GeoParquet metadata, writer, reader and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
from rasterio.crs import CRS

from geobimors.embeddings.store import (
    BASE_COLUMNS,
    StoreWriter,
    chips_table,
    make_meta,
    open_store,
    write_store,
)
from geobimors.errors import InputError, ModelError, OutputError
from geobimors.raster.grid import GridSpec, build_grid
from geobimors.raster.read import ReadSpec
from geobimors.raster.scene import open_scene
from geobimors.run.store import RunLock


def _meta(scene_path: Path, dtype: str = "float16", dim: int = 8, captions: bool = False):
    scene = open_scene(str(scene_path))
    grid = build_grid(scene, GridSpec.parse(32, 0))
    read = ReadSpec(scene.path, grid, (1, 2, 3), None, None, 0.5)
    return make_meta(
        read,
        "tiny",
        "abcdef0123456789",
        dim,
        {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        dtype=dtype,
        captioner="tiny-captioner" if captions else None,
        caption_model="tiny-encoder" if captions else None,
        caption_dim=4 if captions else None,
    ), grid


def _table(meta, grid, seed: int = 0, captions: bool = False):
    chips = list(grid.chips())
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(chips), meta.embedding_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return (
        chips_table(
            meta,
            np.array([c.row for c in chips]),
            np.array([c.col for c in chips]),
            grid.footprint_windows(chips),
            np.ones(len(chips), np.float32),
            emb,
            captions=[f"chip {i}" for i in range(len(chips))] if captions else None,
            caption_embeddings=rng.normal(size=(len(chips), 4)) if captions else None,
        ),
        emb,
    )


def test_store_roundtrip_schema_and_metadata(rgb_scene: Path, tmp_path: Path) -> None:
    meta, grid = _meta(rgb_scene)
    table, emb = _table(meta, grid)
    out = write_store(tmp_path / "s.parquet", meta, [table])
    store = open_store(out)
    assert store.columns[: len(BASE_COLUMNS)] == list(BASE_COLUMNS)
    assert store.n_rows == len(grid) == 12  # 96 x 128 px scene, 32 px chips: 3 x 4
    assert store.meta.model == "tiny" and store.meta.embedding_dim == 8 and store.meta.dtype == "float16"
    assert store.meta.crs == CRS.from_epsg(32632)
    assert store.meta.grid["n_rows"] == 3 and store.meta.grid["n_cols"] == 4
    got = np.concatenate([store.embeddings_of(b) for b in store.iter_batches(batch_size=5)])
    assert got.dtype == np.float32 and got.shape == (12, 8)
    np.testing.assert_allclose(got, emb, atol=1e-3)  # float16 rounding only
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and column["encoding"] == "WKB"
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 32632}
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    # The scene is 1280 m x 960 m from (500000, 5000000) downwards.
    assert column["bbox"] == [500000.0, 4999040.0, 501280.0, 5000000.0]
    first = store.read_table(["chip_id", "pixel_bbox", "centre_lat", "centre_lon"]).to_pylist()[0]
    assert first["pixel_bbox"] == [0, 0, 32, 32]
    assert 45.0 < first["centre_lat"] < 45.2 and 8.9 < first["centre_lon"] < 9.1  # UTM 32N, 500 km E
    assert len(first["chip_id"]) == 16


def test_geopandas_reads_the_store_with_its_crs(rgb_scene: Path, tmp_path: Path) -> None:
    meta, grid = _meta(rgb_scene)
    out = write_store(tmp_path / "s.parquet", meta, [_table(meta, grid)[0]])
    frame = gpd.read_parquet(out)
    assert frame.crs == CRS.from_epsg(32632)
    assert len(frame) == 12 and frame.geometry.geom_type.eq("Polygon").all()
    assert frame.geometry.iloc[0].bounds == (500000.0, 4999680.0, 500320.0, 5000000.0)
    via_store = open_store(out).to_geodataframe(["chip_id"])
    assert via_store.crs == frame.crs and list(via_store.chip_id) == list(frame.chip_id)


def test_chip_ids_are_stable_and_depend_on_model_and_settings(rgb_scene: Path, tmp_path: Path) -> None:
    meta, grid = _meta(rgb_scene)
    a = _table(meta, grid, seed=0)[0].column("chip_id").to_pylist()
    b = _table(meta, grid, seed=1)[0].column("chip_id").to_pylist()
    assert a == b and len(set(a)) == len(a)
    from dataclasses import replace

    other = replace(meta, model_fingerprint="ffffffffffffffff")
    assert set(_table(other, grid)[0].column("chip_id").to_pylist()).isdisjoint(a)
    other_bands = replace(meta, bands=(3, 2, 1))
    assert set(_table(other_bands, grid)[0].column("chip_id").to_pylist()).isdisjoint(a)


def test_float32_and_captions_columns(rgb_scene: Path, tmp_path: Path) -> None:
    meta, grid = _meta(rgb_scene, dtype="float32", captions=True)
    table, emb = _table(meta, grid, captions=True)
    store = open_store(write_store(tmp_path / "s.parquet", meta, [table]))
    assert store.meta.has_captions and store.meta.caption_dim == 4
    batch = next(store.iter_batches(["caption", "caption_embedding", "embedding"]))
    np.testing.assert_array_equal(store.embeddings_of(batch), emb)
    assert store.embeddings_of(batch, "caption_embedding").shape == (12, 4)
    assert batch.column("caption").to_pylist()[3] == "chip 3"


def test_vector_columns_have_no_dictionary_pages(rgb_scene: Path, tmp_path: Path) -> None:
    # Dictionary-encoded float16 vectors save no space and decode 4x slower in exact search.
    meta, grid = _meta(rgb_scene, captions=True)
    path = write_store(tmp_path / "s.parquet", meta, [_table(meta, grid, captions=True)[0]])
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    vectors = [path for path in encodings if path.split(".")[0] in ("embedding", "caption_embedding")]
    assert len(vectors) == 2
    for name in vectors:
        assert "RLE_DICTIONARY" not in encodings[name] and "PLAIN_DICTIONARY" not in encodings[name], name
    assert "RLE_DICTIONARY" in encodings["scene"]  # other columns keep theirs


def test_writer_streams_row_groups_and_leaves_nothing_on_failure(rgb_scene: Path, tmp_path: Path) -> None:
    meta, grid = _meta(rgb_scene)
    table = _table(meta, grid)[0]
    out = tmp_path / "s.parquet"
    with StoreWriter(out, meta, row_group_size=5) as writer:
        for start in range(0, 12, 3):
            writer.write(table.slice(start, 3))
        assert not out.exists()  # only the temporary file until close
        assert writer.n_rows == 10  # two full row groups on disk, two rows pending
        writer.close()
    assert pq.ParquetFile(out).num_row_groups == 3
    with pytest.raises(RuntimeError), StoreWriter(tmp_path / "t.parquet", meta) as writer:
        writer.write(table)
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet", "scene.tif"]


def test_existing_output_needs_overwrite(rgb_scene: Path, tmp_path: Path) -> None:
    meta, grid = _meta(rgb_scene)
    out = write_store(tmp_path / "s.parquet", meta, [_table(meta, grid)[0]])
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        write_store(out, meta, [])
    with pytest.raises(OutputError, match=r"\.parquet extension"):
        StoreWriter(tmp_path / "s.gpkg", meta)
    write_store(out, meta, [_table(meta, grid)[0].slice(0, 2)], overwrite=True)
    assert open_store(out).n_rows == 2


def test_check_model_names_both_models(rgb_scene: Path, tmp_path: Path) -> None:
    meta, grid = _meta(rgb_scene)
    store = open_store(write_store(tmp_path / "s.parquet", meta, [_table(meta, grid)[0]]))
    store.check_model("tiny", "abcdef0123456789")
    with pytest.raises(ModelError, match=r"made with model tiny \(weights abcdef0123456789\), not ViT-B-16"):
        store.check_model("ViT-B-16", "0000000000000000")


def test_open_store_refuses_bad_files(rgb_scene: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist; create it with geobimors embed"):
        open_store(tmp_path / "missing.parquet")
    (tmp_path / "gone.parquet.partial").mkdir()
    with pytest.raises(InputError, match=r"not finished .* run the same geobimors embed command"):
        open_store(tmp_path / "gone.parquet")
    text = tmp_path / "notes.parquet"
    text.write_text("not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        open_store(text)
    meta, grid = _meta(rgb_scene)
    good = write_store(tmp_path / "good.parquet", meta, [_table(meta, grid)[0]])
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated"):
        open_store(truncated)
    plain = tmp_path / "plain.parquet"
    gpd.GeoDataFrame({"a": [1]}, geometry=gpd.points_from_xy([0], [0]), crs=4326).to_parquet(plain)
    with pytest.raises(InputError, match="not a geobimors embeddings store"):
        open_store(plain)


def test_open_store_refuses_a_store_being_written(rgb_scene: Path, tmp_path: Path) -> None:
    meta, grid = _meta(rgb_scene)
    out = write_store(tmp_path / "s.parquet", meta, [_table(meta, grid)[0]])
    with RunLock(out), pytest.raises(InputError, match="still being written"):
        open_store(out)
    assert open_store(out).n_rows == 12  # the lock is gone with the run
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())

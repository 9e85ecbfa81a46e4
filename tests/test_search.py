"""geobimors search and geobimors index: text and example queries, areas, index, outputs, bad input."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from PIL import Image

import geobimors
from geobimors.embeddings.index import (
    MIN_SCANNED_ROWS,
    build_index,
    default_nlist,
    default_nprobe,
    index_paths,
    open_index,
)
from geobimors.embeddings.search import exact_search, rocchio, search, text_queries
from geobimors.embeddings.store import chips_table, make_meta, open_store, write_store
from geobimors.errors import InputError, OutputError
from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.labels import Label
from geobimors.models.clip import load_model
from geobimors.raster.grid import GridSpec, build_grid
from geobimors.raster.read import ReadSpec
from geobimors.raster.scene import open_scene

from cli_helpers import assert_one_line_error, run_cli
from rasters import make_geotiff, random_rgb
from tiny_models import make_tiny_clip_dir


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    """A real store: a 96 x 128 px scene embedded with the tiny model in 16 px chips (6 x 8 = 48 chips)."""
    root = tmp_path_factory.mktemp("search")
    scene = make_geotiff(root / "scene.tif", random_rgb(96, 128, seed=3))
    geobimors.embed(scene, root / "scene.parquet", model=tiny_model, chip_size="16", progress="none")
    return root / "scene.parquet"


def _all_embeddings(path: Path) -> tuple[np.ndarray, gpd.GeoDataFrame]:
    store = open_store(path)
    frame = store.to_geodataframe(["chip_id", "row", "col"])
    return np.concatenate([store.embeddings_of(b) for b in store.iter_batches(["embedding"])]), frame


def test_text_search_ranks_like_the_zero_shot_head(store_path: Path, tiny_model: str) -> None:
    embeddings, frame = _all_embeddings(store_path)
    hits = geobimors.search(store_path, ["forest", "a harbour"], k=7, model=tiny_model)
    clip = load_model(tiny_model)
    # The query vector is the map head's prompt ensemble for that label.
    head = ZeroShotHead(clip, [Label("forest", "forest"), Label("a harbour", "a harbour")])
    expected = embeddings @ head.class_features.numpy().T
    for q, name in enumerate(["forest", "a harbour"]):
        got = hits[hits["query"] == name]
        assert got["rank"].tolist() == list(range(1, 8))
        order = np.argsort(-expected[:, q], kind="stable")[:7]
        assert got["chip_id"].tolist() == frame["chip_id"].iloc[order].tolist()
        np.testing.assert_allclose(got["score"], expected[order, q], atol=1e-5)
        # Geometry and grid position come from the store row of the chip.
        assert got.geometry.geom_equals(frame.geometry.iloc[order].reset_index(drop=True).set_axis(got.index)).all()
    assert hits.crs == "EPSG:32632" and hits.attrs["method"] == "exact"


def test_like_examples_and_the_rocchio_rule(store_path: Path, tmp_path: Path) -> None:
    embeddings, frame = _all_embeddings(store_path)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    ids = frame["chip_id"].tolist()
    # One chip as example: itself first, with similarity 1.
    one = search(store_path, like=[ids[10]], k=3).frame
    assert one["chip_id"].iloc[0] == ids[10] and one["score"].iloc[0] == pytest.approx(1.0, abs=1e-3)
    assert one["query"].unique().tolist() == ["like"]
    # Points over the scene select the chips they fall in; several positives and a negative
    # combine as normalise(mean(positives) - w * mean(negatives)).
    centres = frame.geometry.centroid
    points = gpd.GeoDataFrame(geometry=[centres.iloc[3], centres.iloc[20]], crs=frame.crs).to_crs(4326)
    points.to_file(tmp_path / "clicks.gpkg")
    result = search(store_path, like=[tmp_path / "clicks.gpkg", ids[30]], unlike=[ids[0]], unlike_weight=0.7, k=48)
    query = unit[[3, 20, 30]].mean(axis=0) - 0.7 * unit[0]
    query /= np.linalg.norm(query)
    np.testing.assert_allclose(result.queries[0].vector, query, atol=1e-5)
    expected = embeddings @ query
    got = result.frame.set_index("chip_id")["score"]
    np.testing.assert_allclose(got[ids].to_numpy(), expected, atol=1e-5)
    # A polygon covers every chip it overlaps.
    box = shapely.box(*frame.geometry.iloc[0].bounds).buffer(-1)
    gpd.GeoDataFrame(geometry=[box], crs=frame.crs).to_file(tmp_path / "area.geojson")
    polygon = search(store_path, like=[tmp_path / "area.geojson"], k=1)
    np.testing.assert_allclose(polygon.queries[0].vector, unit[0], atol=1e-5)


def test_like_an_image_file_embeds_it_with_the_store_model(store_path: Path, tiny_model: str, tmp_path: Path) -> None:
    image = np.ascontiguousarray(random_rgb(16, 16, seed=9).transpose(1, 2, 0))
    Image.fromarray(image).save(tmp_path / "example.png")
    clip = load_model(tiny_model)
    vector = clip.encode_images(clip.preprocess(image[None])).numpy()[0]
    result = search(store_path, like=[tmp_path / "example.png"], k=5, model=tiny_model)
    np.testing.assert_allclose(result.queries[0].vector, vector, atol=1e-5)


def test_unlike_refines_text_queries(store_path: Path, tiny_model: str) -> None:
    embeddings, frame = _all_embeddings(store_path)
    text = text_queries(load_model(tiny_model), ["forest"])[0].vector
    unit = embeddings[5] / np.linalg.norm(embeddings[5])
    result = search(store_path, "forest", unlike=[frame["chip_id"].iloc[5]], k=3, model=tiny_model)
    np.testing.assert_allclose(result.queries[0].vector, rocchio(text[None], unit[None], 0.5), atol=1e-5)
    with pytest.raises(InputError, match="cancel out"):
        rocchio(unit[None], unit[None], 1.0)


def test_within_and_min_score(store_path: Path, tmp_path: Path) -> None:
    embeddings, frame = _all_embeddings(store_path)
    xmin, ymin, xmax, ymax = frame.total_bounds
    area = shapely.box(xmin, ymin, (xmin + xmax) / 2, (ymin + ymax) / 2)
    like = frame["chip_id"].iloc[0]
    inside = search(store_path, like=[like], k=100, within=f"{xmin},{ymin},{(xmin + xmax) / 2},{(ymin + ymax) / 2}")
    overlapping = frame[frame.intersects(area) & ~frame.touches(area)]
    assert sorted(inside.frame["chip_id"]) == sorted(overlapping["chip_id"]) and inside.n_rows == len(overlapping)
    # The same area (1 m inside, so reprojection round-off cannot reach the next chips) in another CRS.
    lonlat = gpd.GeoSeries([area.buffer(-1, join_style="mitre")], crs=frame.crs).to_crs(4326)
    lonlat.to_file(tmp_path / "area.gpkg")
    from_file = search(store_path, like=[like], k=100, within=tmp_path / "area.gpkg")
    assert sorted(from_file.frame["chip_id"]) == sorted(overlapping["chip_id"])
    box = lonlat.iloc[0].bounds  # the lon/lat box around it: overlaps the same chips, or a few more
    from_box = search(store_path, like=[like], k=100, within=",".join(map(str, box)) + "@EPSG:4326")
    assert set(from_box.frame["chip_id"]) >= set(overlapping["chip_id"])
    assert len(from_box.frame) <= len(overlapping) + 4
    # Outside the scene: an honest empty result, said plainly.
    empty = search(store_path, like=[like], k=10, within="0,0,1,1")
    assert len(empty.frame) == 0 and any("no chip of the store lies within" in n for n in empty.notes)
    # --min-score cuts.
    cut = search(store_path, like=[like], k=48, min_score=0.5)
    assert (cut.frame["score"] >= 0.5).all()
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert len(cut.frame) == int((embeddings @ unit[0] >= 0.5).sum())


def test_streaming_top_k_is_exact_across_batches(store_path: Path) -> None:
    embeddings, _ = _all_embeddings(store_path)
    store = open_store(store_path)
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(3, embeddings.shape[1])).astype(np.float32)
    top, searched, grids = exact_search(store, queries, k=5, batch_size=7, grid_shape=(6, 8))
    assert searched == 48 and grids is not None
    scores = embeddings @ queries.T
    for q in range(3):
        got_scores, positions = top.sorted(q)
        assert positions.tolist() == np.argsort(-scores[:, q], kind="stable")[:5].tolist()
        np.testing.assert_allclose(got_scores, np.sort(scores[:, q])[::-1][:5], atol=1e-6)
        np.testing.assert_allclose(grids[q].ravel(), scores[:, q], atol=1e-6)  # rows are in grid order


def _synthetic_store(path: Path, scene_path: Path, n_clusters: int = 20, dim: int = 16, seed: int = 0) -> np.ndarray:
    """A store of 64 x 64 = 4096 chips of clustered synthetic embeddings (for the index)."""
    scene = open_scene(str(scene_path))
    grid = build_grid(scene, GridSpec.parse(2, 0))
    meta = make_meta(ReadSpec(scene.path, grid, (1, 2, 3), None, None, 0.5), "synthetic", "f" * 16, dim, {})
    chips = list(grid.chips())
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    emb = centres[rng.integers(0, n_clusters, len(chips))] + 0.3 * rng.normal(size=(len(chips), dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    rows, cols = np.array([c.row for c in chips]), np.array([c.col for c in chips])
    table = chips_table(meta, rows, cols, grid.footprint_windows(chips), np.ones(len(chips)), emb)
    write_store(path, meta, [table.slice(0, 2000), table.slice(2000)], overwrite=True)
    return emb.astype(np.float16).astype(np.float32)


def test_index_is_used_when_fresh_and_ignored_when_stale(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scene = make_geotiff(tmp_path / "big.tif", random_rgb(128, 128))
    emb = _synthetic_store(tmp_path / "s.parquet", scene)
    store = open_store(tmp_path / "s.parquet")
    summary = build_index(store, nlist=32, nprobe=8)
    assert summary.n_rows == 4096 and index_paths(store.path)[0].exists()
    with pytest.raises(OutputError, match="--overwrite"):
        build_index(store)
    rng = np.random.default_rng(1)
    ids = store.to_geodataframe(["chip_id"])["chip_id"].to_numpy()
    recalls = []
    for i in rng.choice(4096, 10, replace=False):
        indexed = search(store, like=[ids[i]], k=100)
        assert indexed.method == "index (faiss)"
        exact = search(store, like=[ids[i]], k=100, use_index=False)
        assert exact.method == "exact"
        recalls.append(len(set(indexed.frame["chip_id"]) & set(exact.frame["chip_id"])) / 100)
        # Scores of index hits are the exact cosine similarities (fp16 codes of a float16 store).
        truth = dict(zip(ids, emb @ (emb[i] / np.linalg.norm(emb[i]))))
        np.testing.assert_allclose(indexed.frame["score"], [truth[c] for c in indexed.frame["chip_id"]], atol=2e-3)
    assert np.mean(recalls) >= 0.9
    # Options the index cannot answer fall back to exact search, with a note.
    within = search(store, like=[ids[0]], k=5, within="-1e10,-1e10,1e10,1e10")
    assert within.method == "exact" and any("exact search" in n for n in within.notes)
    # A rewritten store makes the index stale: noted, exact search.
    _synthetic_store(tmp_path / "s.parquet", scene, seed=5)
    stale = search(tmp_path / "s.parquet", like=[ids[0]], k=5)
    assert stale.method == "exact" and any("stale" in n for n in stale.notes)
    assert open_index(open_store(tmp_path / "s.parquet"))[0] is None
    # The CLI builds it again.
    rebuilt = run_cli(capsys, "index", tmp_path / "s.parquet", "--overwrite", "--nlist", "16")
    assert rebuilt.exit_code == 0 and "16 cells" in rebuilt.out
    assert open_index(open_store(tmp_path / "s.parquet"))[0] is not None


def test_default_index_scans_at_least_50000_rows(tmp_path: Path) -> None:
    # Small stores have small cells: the default scans enough of them for 50,000 rows (all of a small store).
    for n_rows in (4096, 100_000, 260_000, 1_000_000, 10_000_000):
        nlist = default_nlist(n_rows)
        scanned = default_nprobe(nlist, n_rows) * n_rows / nlist
        assert scanned >= min(n_rows, MIN_SCANNED_ROWS) and default_nprobe(nlist, n_rows) >= nlist // 4
    scene = make_geotiff(tmp_path / "big.tif", random_rgb(128, 128))
    _synthetic_store(tmp_path / "s.parquet", scene)
    store = open_store(tmp_path / "s.parquet")
    summary = build_index(store)
    assert summary.nprobe == summary.nlist  # 4,096 rows: every cell
    ids = store.to_geodataframe(["chip_id"])["chip_id"].to_numpy()
    for i in (0, 1234, 4000):
        indexed = search(store, like=[ids[i]], k=100)
        exact = search(store, like=[ids[i]], k=100, use_index=False)
        assert indexed.method == "index (faiss)"
        assert len(set(indexed.frame["chip_id"]) & set(exact.frame["chip_id"])) >= 98  # fp16 ties at the cut


def test_cli_writes_a_styled_hits_layer_and_a_similarity_cog(
    capsys: pytest.CaptureFixture[str], store_path: Path, tiny_model: str, tmp_path: Path
) -> None:
    out, tif = tmp_path / "hits.gpkg", tmp_path / "hits.tif"
    result = run_cli(
        capsys, "search", store_path, "forest", "water", "-k", "4", "-m", tiny_model, "-o", out, "--raster", tif
    )
    assert result.exit_code == 0, result.err
    assert "searched 48 chips (exact); 8 hits" in result.out
    hits = gpd.read_file(out, layer="hits")
    assert list(hits.columns) == ["rank", "score", "query", "chip_id", "row", "col", "geometry"]
    assert hits["query"].tolist() == ["forest"] * 4 + ["water"] * 4
    with sqlite3.connect(out) as db:
        (qml,) = db.execute("SELECT styleQML FROM layer_styles WHERE f_table_name = 'hits'").fetchone()
    assert 'attr="query"' in qml  # several queries: categorized by query
    embeddings, frame = _all_embeddings(store_path)
    vectors = np.stack([q.vector for q in text_queries(load_model(tiny_model), ["forest", "water"])])
    with rasterio.open(tif) as raster:
        assert raster.count == 2 and raster.descriptions == ("forest", "water")
        assert (raster.height, raster.width) == (6, 8) and raster.crs == "EPSG:32632"
        assert raster.profile["tiled"] and raster.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        grid = raster.read()
        # Cell (row, col) of the raster holds that chip's score, and lies on the chip.
        np.testing.assert_allclose(grid[:, frame["row"], frame["col"]].T, embeddings @ vectors.T, atol=1e-5)
        x, y = raster.xy(2, 3)
        assert frame[(frame["row"] == 2) & (frame["col"] == 3)].geometry.iloc[0].contains(shapely.Point(x, y))
    # One query: graduated by score. Without -o: the best hits are listed, nothing written.
    single = run_cli(capsys, "search", store_path, "forest", "-k", "2", "-m", tiny_model, "-o", tmp_path / "one.gpkg")
    assert single.exit_code == 0
    with sqlite3.connect(tmp_path / "one.gpkg") as db:
        (qml,) = db.execute("SELECT styleQML FROM layer_styles WHERE f_table_name = 'hits'").fetchone()
    assert "graduatedSymbol" in qml and 'attr="score"' in qml
    listed = run_cli(capsys, "search", store_path, "forest", "-k", "2", "-m", tiny_model)
    assert listed.exit_code == 0 and hits["chip_id"].iloc[0] in listed.out


def test_bad_input(capsys: pytest.CaptureFixture[str], store_path: Path, tiny_model: str, tmp_path: Path) -> None:
    out = tmp_path / "hits.gpkg"

    def check(code: int, *args: object, fragments: tuple[str, ...]) -> None:
        result = run_cli(capsys, "search", *args)
        assert_one_line_error(result, code, *fragments)
        assert not out.exists() and not list(tmp_path.glob(".*tmp*"))

    check(2, store_path, "", "-o", out, fragments=("empty query",))
    check(2, store_path, "  ", "-o", out, fragments=("empty query",))
    check(2, store_path, "forest", "-k", "0", "-o", out, fragments=("-k must be at least 1",))
    check(2, store_path, "-o", out, fragments=("nothing to search for",))
    check(2, store_path, "--like", "0123456789abcdef", "-o", out, fragments=("0123456789abcdef", "is not in"))
    check(2, store_path, "--like", "not-a-chip", "-o", out, fragments=("neither a file", "chip id"))
    check(2, store_path, "forest", "--within", "1,2,3", "-o", out, fragments=("--within", "XMIN,YMIN,XMAX,YMAX"))
    check(2, store_path, "forest", "--unlike-weight", "nan", "-o", out, fragments=("not a finite number",))
    check(2, store_path, "forest", "--min-score", "inf", "-o", out, fragments=("not a finite number",))
    check(2, store_path, "forest", "--min-score", "2", "-o", out, fragments=("between -1 and 1",))
    with pytest.raises(InputError, match="finite"):
        geobimors.search(store_path, "forest", unlike_weight=float("nan"))
    huge = tmp_path / "queries.txt"
    huge.write_text("solar farm " * 1_000_000)  # a 10 MB query
    check(2, store_path, "--queries", huge, "-o", out, fragments=("10,999,999 characters", "at most"))
    with pytest.raises(InputError, match="characters"):
        geobimors.search(store_path, "x" * 10_000_000)
    other = str(make_tiny_clip_dir(tmp_path / "other-clip", seed=1))
    check(2, store_path, "forest", "-m", other, "-o", out, fragments=(f"made with model {tiny_model}", f"not {other}"))
    (tmp_path / "not.parquet").write_text("not parquet")
    check(2, tmp_path / "not.parquet", "forest", "-o", out, fragments=("not a readable parquet",))
    check(2, tmp_path / "missing.parquet", "forest", "-o", out, fragments=("does not exist",))
    # Outside the store's extent: exit 0, an empty hits layer, and a plain warning.
    empty = run_cli(capsys, "search", store_path, "forest", "-m", tiny_model, "--within", "0,0,1,1", "-o", out)
    assert empty.exit_code == 0 and "no chip of the store lies within" in empty.err and "0 hits" in empty.out
    assert len(pyogrio.read_dataframe(out, layer="hits")) == 0
    # An existing output is never overwritten without --overwrite, and is checked before any work.
    again = run_cli(capsys, "search", store_path, "forest", "-m", tiny_model, "-o", out)
    assert_one_line_error(again, 2, "already exists", "--overwrite")
    (tmp_path / "h.tif").write_bytes(b"keep")
    kept = run_cli(capsys, "search", store_path, "forest", "-o", tmp_path / "n.gpkg", "--raster", tmp_path / "h.tif")
    assert_one_line_error(kept, 2, "already exists")
    assert (tmp_path / "h.tif").read_bytes() == b"keep" and not (tmp_path / "n.gpkg").exists()


def test_caption_weight_blends_caption_similarity(tiny_model: str, tmp_path: Path) -> None:
    import torch

    from geobimors.models.caption_encoder import load_caption_encoder

    scene = open_scene(str(make_geotiff(tmp_path / "c.tif", random_rgb(32, 64))))
    grid = build_grid(scene, GridSpec.parse(16, 0))
    clip = load_model(tiny_model)
    read = ReadSpec(scene.path, grid, (1, 2, 3), None, None, 0.5)
    meta = make_meta(
        read, tiny_model, clip.fingerprint, 32, {}, captioner="human", caption_model="minilm", caption_dim=384
    )
    chips = list(grid.chips())
    captions = ["a parking lot", "a dense forest", "a lake", "houses", "a river", "a field", "a road", "sand"]
    encoder = load_caption_encoder("minilm", torch.device("cpu"))
    caption_emb = encoder.encode(captions).numpy()
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(chips), 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    rows, cols = np.array([c.row for c in chips]), np.array([c.col for c in chips])
    table = chips_table(meta, rows, cols, grid.footprint_windows(chips), np.ones(8), emb, captions, caption_emb)
    store = write_store(tmp_path / "c.parquet", meta, [table])
    image_only = search(store, "woodland trees", k=8)
    blended = search(store, "woodland trees", k=8, caption_weight=0.5)
    caption_only = search(store, "woodland trees", k=8, caption_weight=1.0)
    assert caption_only.frame["caption"].iloc[0] == "a dense forest"  # the caption says what the query says
    query = encoder.encode(["woodland trees"]).numpy()[0]
    unit = caption_emb.astype(np.float16).astype(np.float32)
    cosine = unit @ query / np.linalg.norm(unit, axis=1) / np.linalg.norm(query)
    by_caption = dict(zip(captions, cosine))
    got = caption_only.frame.set_index("caption")["score"]
    np.testing.assert_allclose(got[captions].to_numpy(), cosine, atol=1e-3)
    image_score = image_only.frame.set_index("caption")["score"]
    mixed = blended.frame.set_index("caption")["score"]
    np.testing.assert_allclose(
        mixed[captions].to_numpy(),
        0.5 * image_score[captions].to_numpy() + 0.5 * np.array([by_caption[c] for c in captions]),
        atol=1e-3,
    )
    with pytest.raises(InputError, match="between 0 and 1"):
        search(store, "forest", caption_weight=2)

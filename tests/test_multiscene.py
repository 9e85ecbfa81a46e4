"""Many scenes, one map (issue 17): overlaps, reprojection, failures, resume after kill -9, embed datasets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine

import geobimors
from geobimors.embeddings.store import open_store
from geobimors.vector.overlap import overlap_losers

from cli_helpers import assert_one_line_error, run_cli, run_command_in_process, throttled
from rasters import make_geotiff, random_rgb

ROOT = Path(__file__).resolve().parents[1]
CHIP = ["--chip-size", "16", "--batch-size", "4", "--progress", "none"]


def origin(x: float, y: float = 5_000_000.0, size: float = 10.0) -> Affine:
    return Affine(size, 0.0, x, 0.0, -size, y)


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two 64 x 64 px scenes (4 x 4 chips of 16 px); b starts 320 m east of a: half of each overlaps."""
    a = make_geotiff(tmp_path / "a.tif", random_rgb(64, 64, seed=1), transform=origin(500_000))
    b = make_geotiff(tmp_path / "b.tif", random_rgb(64, 64, seed=2), transform=origin(500_320))
    return a, b


def chips(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer="chips")


def mapped(capsys: pytest.CaptureFixture[str], model: str, labels: Path, out: Path, *scenes: object, extra=()):
    result = run_cli(capsys, "map", *scenes, "-l", labels, "-m", model, *CHIP, "-o", out, *extra)
    return result


# --- one layer, overlaps ------------------------------------------------------------------------


def test_overlapping_scenes_map_each_place_once(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = pair
    out = tmp_path / "ab.gpkg"
    result = mapped(capsys, tiny_model, labels_file, out, a, b)
    assert result.exit_code == 0, result.err
    layer = chips(out)
    assert {"scene", "source_crs"} <= set(layer.columns) and "datetime" not in layer.columns
    # a comes first and every chip is fully valid: b's two western columns lie under a's eastern ones.
    assert len(layer) == 16 + 8
    assert sorted(layer[layer.scene == "b"].col.unique()) == [2, 3]
    assert (layer.source_crs == "EPSG:32632").all() and layer.crs.to_epsg() == 32632
    centres = shapely.centroid(layer.geometry.to_numpy())
    assert not any(
        shapely.contains(layer.geometry[(layer.scene != s)].to_numpy(), c).any() for c, s in zip(centres, layer.scene)
    )
    assert "b: 16 chips, 0 skipped, 8 left to overlapping scenes" in result.out
    meta = pyogrio.read_info(out, layer="chips")["layer_metadata"]
    assert meta["scenes_done"] == "2/2" and [s["scene"] for s in json.loads(meta["scenes"])] == ["a", "b"]
    kept = tmp_path / "all.gpkg"
    assert mapped(capsys, tiny_model, labels_file, kept, a, b, extra=["--keep-overlaps"]).exit_code == 0
    assert len(chips(kept)) == 32
    assert not Path(str(out) + ".partial").exists() and not Path(str(out) + ".lock").exists()


def test_the_chip_with_more_valid_pixels_wins(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    data = random_rgb(64, 64, seed=1)
    data[:, :, 40:] = 0  # a's eastern chips (cols 2, 3) are 50% and 0% valid: b maps them
    a = make_geotiff(tmp_path / "a.tif", data, transform=origin(500_000), nodata=0)
    b = make_geotiff(tmp_path / "b.tif", random_rgb(64, 64, seed=2), transform=origin(500_320))
    out = tmp_path / "ab.gpkg"
    result = mapped(capsys, tiny_model, labels_file, out, a, b, extra=["--min-valid", "0.3"])
    assert result.exit_code == 0, result.err
    layer = chips(out)
    assert sorted(layer[layer.scene == "a"].col.unique()) == [0, 1]
    assert sorted(layer[layer.scene == "b"].col.unique()) == [0, 1, 2, 3]
    # b listed first: the rank is the valid share, so b still wins where a is half empty.
    again = tmp_path / "ba.gpkg"
    assert mapped(capsys, tiny_model, labels_file, again, b, a, extra=["--min-valid", "0.3"]).exit_code == 0
    assert sorted(chips(again).query("scene == 'a'").col.unique()) == [0, 1]


def test_overlap_rule_ties_go_to_scene_order_then_grid_order() -> None:
    box = shapely.box
    frame = gpd.GeoDataFrame(
        {"scene_index": [0, 1, 1, 2], "chip": [0, 0, 1, 0], "valid_fraction": [1.0, 1.0, 1.0, 0.9]},
        geometry=[box(0, 0, 10, 10), box(0, 0, 10, 10), box(10, 0, 20, 10), box(12, 0, 22, 10)],
    )
    # scene 1's first chip copies scene 0's (tie: scene order); scene 2 has fewer valid pixels.
    assert overlap_losers(frame).tolist() == [1, 3]
    frame.loc[3, "valid_fraction"] = 1.0
    frame.loc[2, "valid_fraction"] = 0.5
    assert overlap_losers(frame).tolist() == [1, 2]


def test_scenes_in_two_crss_are_reprojected_exactly(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    a = make_geotiff(tmp_path / "a.tif", random_rgb(32, 32, seed=1), transform=origin(500_000))
    b = make_geotiff(tmp_path / "b.tif", random_rgb(32, 32, seed=2), crs="EPSG:32633", transform=origin(300_000))
    out = tmp_path / "ab.gpkg"
    result = mapped(capsys, tiny_model, labels_file, out, a, b)
    assert result.exit_code == 0, result.err
    assert "output is in EPSG:4326" in result.err
    layer = chips(out)
    assert layer.crs.to_epsg() == 4326 and set(layer.source_crs) == {"EPSG:32632", "EPSG:32633"}
    back = layer[layer.scene == "b"].to_crs(32633)
    first = back[(back.row == 0) & (back.col == 0)].geometry.iloc[0]
    assert len(first.exterior.coords) > 20  # edges densified before reprojection
    # Back in its own CRS the polygon is the pixel window it was read from: 160 m square at (300000, 5000000).
    assert np.allclose(first.bounds, (300_000, 4_999_840, 300_160, 5_000_000), atol=1e-3)
    assert first.area == pytest.approx(160 * 160, abs=1e-2)
    forced = tmp_path / "forced.gpkg"
    assert mapped(capsys, tiny_model, labels_file, forced, a, b, extra=["--crs", "EPSG:3857"]).exit_code == 0
    assert chips(forced).crs.to_epsg() == 3857


def test_regions_dissolve_across_scene_borders(
    capsys: pytest.CaptureFixture[str], blind_tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    a = make_geotiff(tmp_path / "a.tif", random_rgb(32, 32, seed=1), transform=origin(500_000))
    b = make_geotiff(tmp_path / "b.tif", random_rgb(32, 32, seed=2), transform=origin(500_320))
    out = tmp_path / "ab.gpkg"
    result = mapped(capsys, blind_tiny_model, labels_file, out, a, b, extra=["--regions"])
    assert result.exit_code == 0, result.err
    regions = gpd.read_file(out, layer="regions")
    assert len(regions) == 1 and regions.area.iloc[0] == pytest.approx(640 * 320)


def test_one_scene_from_a_folder_is_the_single_scene_output(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    scene = make_geotiff(folder / "only.tif", random_rgb(48, 48))
    direct, listed = tmp_path / "direct.gpkg", tmp_path / "listed.gpkg"
    assert mapped(capsys, tiny_model, labels_file, direct, scene).exit_code == 0
    assert mapped(capsys, tiny_model, labels_file, listed, folder).exit_code == 0
    x, y = chips(direct), chips(listed)
    assert "scene" not in x.columns and x.drop(columns="geometry").equals(y.drop(columns="geometry"))


def test_stac_items_give_scene_names_and_datetimes(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    items = []
    for path, when in zip(pair, ("2024-05-01T10:00:00Z", "2024-06-01T10:00:00Z")):
        items.append({
            "type": "Feature", "stac_version": "1.0.0", "id": f"S-{path.stem}", "geometry": None, "links": [],
            "properties": {"datetime": when}, "assets": {"visual": {"href": path.name, "type": "image/tiff"}},
        })  # fmt: skip
    catalog = tmp_path / "items.json"
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    out = tmp_path / "stac.gpkg"
    undated = make_geotiff(tmp_path / "c.tif", random_rgb(64, 64, seed=3), transform=origin(503_000))
    result = mapped(capsys, tiny_model, labels_file, out, undated, catalog, extra=["--keep-overlaps"])
    assert result.exit_code == 0, result.err
    layer = chips(out)
    assert set(layer.scene) == {"c", "S-a", "S-b"}
    assert str(layer[layer.scene == "S-b"].datetime.iloc[0]).startswith("2024-06-01 10:00:00")
    assert layer[layer.scene == "c"].datetime.isna().all()


def test_one_stac_item_keeps_its_datetime(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "S2-one", "geometry": None, "links": [],
        "properties": {"datetime": "2024-05-01T10:00:00Z"}, "assets": {"visual": {"href": pair[0].name}},
    }  # fmt: skip
    (tmp_path / "item.json").write_text(json.dumps(item))
    result = mapped(capsys, tiny_model, labels_file, tmp_path / "one.gpkg", tmp_path / "item.json")
    assert result.exit_code == 0, result.err
    layer = chips(tmp_path / "one.gpkg")
    assert set(layer.scene) == {"S2-one"} and len(layer) == 16
    assert str(layer.datetime.iloc[0]).startswith("2024-05-01 10:00:00")


# --- failures and bad input -----------------------------------------------------------------------


def test_a_bad_scene_does_not_stop_the_others(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = pair
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 not a tiff after all")
    two_bands = make_geotiff(tmp_path / "two.tif", random_rgb(64, 64)[:2])
    out = tmp_path / "out.gpkg"
    missing = tmp_path / "missing.tif"
    args = [a, corrupt, two_bands, missing, b]
    result = mapped(capsys, tiny_model, labels_file, out, *args, extra=["--keep-overlaps"])
    assert result.exit_code == 1, result.err
    assert "3 of 5 scenes failed" in result.err and "Traceback" not in result.err
    failed = pyogrio.read_dataframe(out, layer="failed_scenes")
    assert list(failed.scene) == ["corrupt", "two", "missing"]
    assert "not a raster" in failed.reason[0] and "2 bands" in failed.reason[1] and "not found" in failed.reason[2]
    assert set(chips(out).scene) == {"a", "b"} and len(chips(out)) == 32
    stopped = tmp_path / "stopped.gpkg"
    assert_one_line_error(
        mapped(capsys, tiny_model, labels_file, stopped, a, corrupt, b, extra=["--fail-fast"]), 2, "not a raster"
    )
    assert not stopped.exists() and not Path(str(stopped) + ".partial").exists()


def bad_inputs(tmp: Path, pair: tuple[Path, Path]) -> dict[str, tuple[list[object], str]]:
    a, b = pair
    grey = make_geotiff(tmp / "grey.tif", random_rgb(64, 64)[0], transform=origin(501_000))
    no_crs = make_geotiff(tmp / "nocrs.tif", random_rgb(64, 64), crs=None)
    gpkg_scene = make_geotiff(tmp / "scene.gpkg", random_rgb(64, 64), transform=origin(501_000))
    (tmp / "empty").mkdir()
    return {
        "mixed band counts": ([a, grey], "different band counts"),
        "folder with no rasters": ([tmp / "empty", a], "holds no rasters"),
        "glob matching nothing": ([str(tmp / "*.jp2"), a], "matches no raster files"),
        "scenes with and without a CRS": ([a, no_crs, "--allow-no-crs"], "have no crs"),
        "unknown --crs": ([a, b, "--crs", "EPSG:99999"], "--crs"),
        "output among the inputs": ([a, gpkg_scene, "-o", gpkg_scene, "--overwrite"], "also an input scene"),
    }


BAD_INPUTS = ["mixed band counts", "folder with no rasters", "glob matching nothing", "scenes with and without a CRS",
              "unknown --crs", "output among the inputs"]  # fmt: skip


def test_many_scene_cases_are_documented() -> None:
    text = (ROOT / "docs" / "errors.md").read_text()
    others = [
        "several scenes without -o", "--embeddings with several scenes", "duplicate paths",
        "a bad scene with --fail-fast", "embed: several scenes, -o a file", "embed: a bad scene among several",
    ]  # fmt: skip
    missing = [name for name in [*BAD_INPUTS, *others] if f"| {name} |" not in text]
    assert not missing, missing


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str],
    tiny_model: str,
    labels_file: Path,
    pair: tuple[Path, Path],
    tmp_path: Path,
    case: str,
) -> None:
    args, fragment = bad_inputs(tmp_path, pair)[case]
    if "-o" not in args:
        args = [*args, "-o", tmp_path / "out.gpkg"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(capsys, "map", *args, "-l", labels_file, "-m", tiny_model, *CHIP)
    assert_one_line_error(result, 2, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_mixed_band_counts_run_with_bands(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    four = make_geotiff(tmp_path / "four.tif", random_rgb(64, 64).repeat(2, axis=0)[:4], transform=origin(501_000))
    out = tmp_path / "out.gpkg"
    assert mapped(capsys, tiny_model, labels_file, out, pair[0], four, extra=["--bands", "1,2,3"]).exit_code == 0


def test_several_scenes_need_an_output_and_no_embeddings(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    args = ["map", *pair, "-l", labels_file, "-m", tiny_model]
    assert_one_line_error(run_cli(capsys, *args), 2, "-o OUTPUT.gpkg")
    result = run_cli(capsys, *args, "-o", tmp_path / "o.gpkg", "--embeddings", tmp_path / "e.parquet")
    assert_one_line_error(result, 2, "geobimors embed")


def test_duplicate_scenes_are_mapped_once(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = pair
    out = tmp_path / "out.gpkg"
    result = mapped(capsys, tiny_model, labels_file, out, a, b, a, extra=["--keep-overlaps"])
    assert result.exit_code == 0 and "named more than once" in result.err
    assert len(chips(out)) == 32


# --- progress, resume -----------------------------------------------------------------------------


def test_jsonl_progress_counts_scenes(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.gpkg"
    result = run_cli(capsys, "map", *pair, "-l", labels_file, "-m", tiny_model, "--chip-size", "16",
                     "--progress", "jsonl", "-o", out)  # fmt: skip
    events = [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]
    assert events[0]["total"] == 32 and events[0]["scenes_total"] == 2
    assert sorted(e["scene"] for e in events if e["event"] == "scene") == ["a", "b"]
    assert events[-1]["event"] == "done" and events[-1]["scenes_done"] == 2


def _command(model: str, labels: Path, out: Path, *scenes: Path) -> list[str]:
    return [sys.executable, "-m", "geobimors.cli", "map", *map(str, scenes), "-l", str(labels), "-m", model,
            "--chip-size", "8", "--batch-size", "16", "-o", str(out), "--progress", "none", "-q"]  # fmt: skip


@pytest.mark.slow
def test_killed_run_resumes_and_added_scenes_map_only_the_new(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    scenes = [
        make_geotiff(tmp_path / f"s{i}.tif", random_rgb(128, 128, seed=i), transform=origin(500_000 + 960 * i))
        for i in range(4)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    clean = tmp_path / "clean.gpkg"
    done = run_command_in_process(capsys, _command(tiny_model, labels_file, clean, *scenes))
    assert done.exit_code == 0, done.err
    out = tmp_path / "out.gpkg"
    partial = Path(str(out) + ".partial")
    # Reads after the 20th batch (of 48) wait 10 s: the run is killed with 20 or 21 batches stored.
    command = throttled(_command(tiny_model, labels_file, out, *scenes[:3]), fast=20, delay=10)
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(partial.glob("scene-*/batch-*.parquet"))) < 20 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    stored = len(list(partial.glob("scene-*/batch-*.parquet")))
    assert not out.exists() and stored >= 20
    # The same scenes plus a fourth: the stored batches are kept, only the rest is mapped.
    resumed = subprocess.run(
        [*_command(tiny_model, labels_file, out, *scenes)[:-1]], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: {stored * 16} chips" in resumed.stdout
    assert not partial.exists() and not Path(str(out) + ".lock").exists()
    x, y = chips(clean), chips(out)
    assert len(x) > 3 * 256 and x.drop(columns="geometry").equals(y.drop(columns="geometry"))
    assert all(p.equals_exact(q, 0) for p, q in zip(x.geometry, y.geometry))


def test_failed_scene_fixed_and_rerun_maps_only_it(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = pair
    late = tmp_path / "late.tif"
    late.write_bytes(b"not yet")
    out = tmp_path / "out.gpkg"
    assert mapped(capsys, tiny_model, labels_file, out, a, b, late).exit_code == 1
    assert Path(str(out) + ".partial").is_dir()  # the finished scenes wait for the missing one
    make_geotiff(late, random_rgb(64, 64, seed=9), transform=origin(502_000))
    again = mapped(capsys, tiny_model, labels_file, out, a, b, late, extra=["--overwrite"])
    assert again.exit_code == 0, again.err
    assert "resumed: 32 chips" in again.out and not Path(str(out) + ".partial").exists()
    clean = tmp_path / "clean.gpkg"
    assert mapped(capsys, tiny_model, labels_file, clean, a, b, late).exit_code == 0
    assert chips(clean).drop(columns="geometry").equals(chips(out).drop(columns="geometry"))


def test_adding_scenes_to_a_finished_map_maps_only_the_new(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = pair
    c = make_geotiff(tmp_path / "c.tif", random_rgb(64, 64, seed=7), transform=origin(500_480))
    out = tmp_path / "out.gpkg"
    assert mapped(capsys, tiny_model, labels_file, out, a, b).exit_code == 0
    assert "scene_parts" in pyogrio.list_layers(out)[:, 0]
    assert_one_line_error(mapped(capsys, tiny_model, labels_file, out, a, b, c), 2, "--overwrite")
    added = mapped(capsys, tiny_model, labels_file, out, a, b, c, extra=["--overwrite"])
    assert added.exit_code == 0, added.err
    assert "resumed: 32 chips" in added.out  # a and b came from the output: only c was mapped
    clean = tmp_path / "clean.gpkg"
    assert mapped(capsys, tiny_model, labels_file, clean, a, b, c).exit_code == 0
    x, y = chips(clean), chips(out)
    assert set(x.scene) == {"a", "b", "c"} and x.drop(columns="geometry").equals(y.drop(columns="geometry"))
    # Other settings change every scene's fingerprint: nothing is restored.
    other = mapped(capsys, tiny_model, labels_file, out, a, b, c, extra=["--overwrite", "--top-k", "2"])
    assert other.exit_code == 0 and "resumed" not in other.out


# --- embed: a dataset directory -----------------------------------------------------------------


def test_embed_several_scenes_writes_one_store_per_scene(
    capsys: pytest.CaptureFixture[str], tiny_model: str, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = pair
    directory = tmp_path / "region.parquet"
    args = ["embed", a, b, "-m", tiny_model, "--chip-size", "16", "--progress", "none", "-o", f"{directory}/"]
    result = run_cli(capsys, *args)
    assert result.exit_code == 0, result.err
    assert sorted(p.name for p in directory.iterdir()) == ["a.parquet", "b.parquet"]
    stores = [open_store(directory / name) for name in ("a.parquet", "b.parquet")]
    assert all(s.n_rows == 16 and s.meta.complete for s in stores)
    assert stores[0].meta.model_fingerprint == stores[1].meta.model_fingerprint
    assert stores[1].meta.extra["scene_name"] == "b"
    c = make_geotiff(tmp_path / "c.tif", random_rgb(64, 64, seed=5), transform=origin(502_000))
    before = (directory / "a.parquet").stat().st_mtime_ns
    added = run_cli(capsys, *args[:3], c, *args[3:])
    assert added.exit_code == 0, added.err
    assert "a: kept" in added.out and "c: 16 chips embedded" in added.out
    assert (directory / "a.parquet").stat().st_mtime_ns == before
    assert sorted(p.name for p in directory.iterdir()) == ["a.parquet", "b.parquet", "c.parquet"]


def test_embed_dataset_reports_a_bad_scene(
    capsys: pytest.CaptureFixture[str], tiny_model: str, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"nope")
    result = run_cli(capsys, "embed", *pair, bad, "-m", tiny_model, "--chip-size", "16", "--progress", "none",
                     "-o", tmp_path / "ds")  # fmt: skip
    assert result.exit_code == 1 and "1 of 3 scenes failed" in result.err
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["a.parquet", "b.parquet"]
    assert_one_line_error(
        run_cli(capsys, "embed", *pair, "-m", tiny_model, "-o", tmp_path / "a.tif", "--overwrite"), 2, "is a file"
    )


def test_python_api_takes_a_list(tiny_model: str, pair: tuple[Path, Path], tmp_path: Path) -> None:
    summary = geobimors.map_to_gpkg(
        list(pair), ["forest", "water"], tmp_path / "api.gpkg", model=tiny_model, chip_size=16, keep_overlaps=True
    )
    assert [run.source.name for run in summary.runs] == ["a", "b"] and summary.total.n_classified == 32
    dataset = geobimors.embed(list(pair), tmp_path / "api.parquet", model=tiny_model, chip_size=16, progress="none")
    assert len(dataset.scenes) == 2 and (tmp_path / "api.parquet" / "b.parquet").is_file()
    assert np.isfinite(open_store(tmp_path / "api.parquet" / "a.parquet").meta.embedding_dim)


def test_a_scene_that_fails_while_running_is_reported(
    tiny_model: str, labels_file: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from geobimors.labels import read_labels
    from geobimors.raster.sources import resolve_scenes
    from geobimors.run.multi import map_scenes_to_file, plan_scenes
    from geobimors.run.plan import MapSettings

    c = make_geotiff(tmp_path / "c.tif", random_rgb(64, 64, seed=4), transform=origin(502_000))
    sources = resolve_scenes([str(pair[0]), str(c), str(pair[1])])
    settings = MapSettings(scene="", labels=tuple(read_labels(labels_file)), model=tiny_model, chip_size="16",
                           batch_size=4, device="cpu")  # fmt: skip
    multi = plan_scenes(sources, settings)
    c.unlink()  # gone after planning: its tasks fail
    summary = map_scenes_to_file(multi, tmp_path / "out.gpkg", progress_mode="none", keep_overlaps=True)
    assert [run.source.name for run in summary.failed_scenes] == ["c"]
    assert set(chips(tmp_path / "out.gpkg").scene) == {"a", "b"}
    failed = pyogrio.read_dataframe(tmp_path / "out.gpkg", layer="failed_scenes")
    assert list(failed.scene) == ["c"] and failed.reason[0]


@pytest.mark.slow
def test_killed_embed_dataset_resumes_per_scene_to_identical_files(
    capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    scenes = [
        make_geotiff(tmp_path / f"s{i}.tif", random_rgb(128, 128, seed=i), transform=origin(500_000 + 3000 * i))
        for i in range(3)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "geobimors.cli", "embed", *map(str, scenes), "-m", tiny_model,
                "--chip-size", "8", "--batch-size", "16", "-o", str(out), "--progress", "none", "-q"]  # fmt: skip

    clean = tmp_path / "clean"
    assert run_command_in_process(capsys, command(clean)).exit_code == 0
    out = tmp_path / "killed"
    # Reads after s0's 16 batches and s1's first wait 10 s: killed while s1 is under way.
    proc = subprocess.Popen(throttled(command(out), fast=17, delay=10), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("s1.parquet.partial/embeddings-*.parquet")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (out / "s0.parquet").is_file() and not (out / "s2.parquet").exists()
    done = subprocess.run(command(out)[:-1], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "s0: kept" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["s0.parquet", "s1.parquet", "s2.parquet"]
    for name in ("s0.parquet", "s1.parquet", "s2.parquet"):
        assert (out / name).read_bytes() == (clean / name).read_bytes()

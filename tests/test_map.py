"""End-to-end mapping: CLI and API on generated and real scenes, with tiny local models."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

import geobimors
from geobimors.heads.classifier import Classifier
from geobimors.labels import read_labels
from geobimors.models.captions import CaptionerSpec
from geobimors.raster.grid import GridSpec, build_grid
from geobimors.raster.scene import open_scene
from geobimors.run.execute import LocalExecutor
from geobimors.run.pipeline import map_to_file
from geobimors.run.plan import MapSettings, plan_map
from geobimors.run.store import store_path
from geobimors.vector.gpkg import chip_polygons

from cli_helpers import assert_one_line_error, run_cli
from rasters import make_geotiff, random_rgb


def read_chips(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer="chips")


def test_map_cli_writes_styled_exact_polygons(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.gpkg"
    result = run_cli(
        capsys, "map", rgb_scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "32", "-o", out, "--device", "cpu"
    )
    assert result.exit_code == 0, result.err
    assert "12 classified, 0 skipped" in result.out and f"output: {out}" in result.out
    chips = read_chips(out)
    info = open_scene(rgb_scene)
    assert chips.crs == info.crs
    assert len(chips) == 3 * 4
    assert list(chips.columns) == [
        "label",
        "score",
        "label_2",
        "score_2",
        "label_3",
        "score_3",
        "row",
        "col",
        "valid_fraction",
        "model",
        "geometry",
    ]
    names = {label.name for label in read_labels(labels_file)}
    assert set(chips["label"]) <= names and set(chips["label_3"]) <= names
    assert (chips["score"] >= chips["score_2"]).all() and (chips["score_2"] >= chips["score_3"]).all()
    assert ((chips["score"] > 0) & (chips["score"] <= 1)).all()
    # Every polygon is its window's footprint; together they tile the scene.
    grid = build_grid(info, GridSpec.parse(32))
    for row in chips.itertuples():
        expected = chip_polygons(info.transform, grid.footprint_windows([grid.chip(row.row, row.col)]))[0]
        assert row.geometry.equals_exact(expected, 1e-6)
    left, bottom, right, top = 500_000, 5_000_000 - 960, 500_000 + 1280, 5_000_000
    assert (
        shapely.union_all(chips.geometry.values).symmetric_difference(shapely.box(left, bottom, right, top)).area < 1e-6
    )
    assert chips.geometry.area.sum() == pytest.approx(1280 * 960)
    # QGIS style stored as the layer's default, categorized by label.
    with sqlite3.connect(out) as db:
        rows = db.execute("SELECT f_table_name, useAsDefault, styleQML FROM layer_styles").fetchall()
        # QGIS only applies a stored style whose geometry column matches the layer's.
        unmatched = db.execute(
            "SELECT s.f_table_name FROM layer_styles s LEFT JOIN gpkg_geometry_columns g "
            "ON g.table_name = s.f_table_name AND g.column_name = s.f_geometry_column WHERE g.table_name IS NULL"
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("chips", 1)] and unmatched == []
    assert 'type="categorizedSymbol"' in rows[0][2] and 'attr="label"' in rows[0][2]
    for name in names:
        assert f'value="{name}"' in rows[0][2]
    # Nothing left behind but the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.gpkg", "labels.txt", "scene.tif"])


def test_regions_layer_dissolves_chips(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.gpkg"
    result = run_cli(
        capsys, "map", rgb_scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "16", "-o", out, "--regions", "-q"
    )
    assert result.exit_code == 0 and result.out == ""
    assert [layer[0] for layer in pyogrio.list_layers(out)] == ["chips", "regions", "layer_styles"]
    chips, regions = read_chips(out), gpd.read_file(out, layer="regions")
    assert len(regions) < len(chips)
    for label, group in chips.groupby("label"):
        mine = regions[regions["label"] == label]
        assert mine.geometry.area.sum() == pytest.approx(group.geometry.area.sum())
        assert (
            shapely.union_all(mine.geometry.values).equals_exact(shapely.union_all(group.geometry.values), 1e-3)
            or shapely.union_all(mine.geometry.values)
            .symmetric_difference(shapely.union_all(group.geometry.values))
            .area
            < 1e-3
        )
    # Regions of the same label never touch (they would have been merged).
    for _, mine in regions.groupby("label"):
        geoms = list(mine.geometry)
        for i in range(len(geoms)):
            for j in range(i + 1, len(geoms)):
                assert geoms[i].intersection(geoms[j]).length == pytest.approx(0)


def test_nodata_chips_are_skipped_and_counted(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    data = random_rgb(64, 64, seed=5)
    data[:, :32, :32] = 0
    scene = make_geotiff(tmp_path / "nodata.tif", data, nodata=0)
    out = tmp_path / "out.gpkg"
    result = run_cli(capsys, "map", scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "16", "-o", out)
    assert result.exit_code == 0, result.err
    assert "12 classified, 4 skipped" in result.out
    chips = read_chips(out)
    assert len(chips) == 12
    assert not ((chips["row"] < 2) & (chips["col"] < 2)).any()


def test_identical_16bit_chips_get_identical_results(tiny_model: str, labels_file: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = rng.integers(0, 3000, (3, 64, 64)).astype(np.uint16)
    pattern = rng.integers(500, 2500, (3, 32, 32)).astype(np.uint16)
    data[:, :32, :32] = pattern
    data[:, 32:, 32:] = pattern
    scene = make_geotiff(tmp_path / "u16.tif", data)
    frame = geobimors.map_scene(scene, labels_file, model=tiny_model, chip_size=32, device="cpu", progress="none")
    first = frame[(frame["row"] == 0) & (frame["col"] == 0)].iloc[0]
    last = frame[(frame["row"] == 1) & (frame["col"] == 1)].iloc[0]
    assert (first["label"], first["score"], first["score_2"]) == (last["label"], last["score"], last["score_2"])
    # ... and not because every chip gets the same answer.
    assert frame["score"].nunique() > 2


def test_api_and_cli_agree(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    frame = geobimors.map_scene(rgb_scene, labels_file, model=tiny_model, chip_size=32, overlap=8, progress="none")
    out = tmp_path / "out.gpkg"
    assert (
        run_cli(
            capsys,
            "map",
            rgb_scene,
            "-l",
            labels_file,
            "-m",
            tiny_model,
            "--chip-size",
            "32",
            "--overlap",
            "8",
            "-o",
            out,
        ).exit_code
        == 0
    )
    chips = read_chips(out)
    assert len(frame) == len(chips) == 4 * 5
    assert frame["label"].tolist() == chips["label"].tolist()
    np.testing.assert_allclose(frame["score"], chips["score"], rtol=1e-6)
    assert all(a.equals_exact(b, 1e-6) for a, b in zip(frame.geometry, chips.geometry))


def test_captions_column_for_a_zero_shot_map(
    capsys: pytest.CaptureFixture[str], tiny_model: str, tiny_blip: str, labels_file: Path, tmp_path: Path
) -> None:
    """``map --captions`` adds a caption to every classified chip, whatever the head; skipped chips get none."""
    data = random_rgb(64, 96, seed=4)
    data[:, :32, :32] = 0  # the first chip is all nodata: skipped, so not captioned either
    scene = make_geotiff(tmp_path / "scene.tif", data, nodata=0)
    common = ["-l", labels_file, "-m", tiny_model, "--chip-size", "32"]
    generation = ["--num-beams", "1", "--max-new-tokens", "3"]
    plain = tmp_path / "plain.gpkg"
    assert run_cli(capsys, "map", scene, *common, "-o", plain).exit_code == 0
    out = tmp_path / "captioned.gpkg"
    result = run_cli(capsys, "map", scene, *common, "--captions", tiny_blip, *generation, "-o", out)
    assert result.exit_code == 0, result.err
    chips, before = read_chips(out), read_chips(plain)
    assert "caption" in chips.columns and "caption" not in before.columns
    assert chips.loc[chips["valid_fraction"] == 0, "caption"].isna().all()
    classified = chips[chips["label"].notna()]
    assert len(classified) == 5 and classified["caption"].map(lambda c: isinstance(c, str) and c != "").all()
    # The zero-shot labels are the plain map's: captions are an attribute, not an input, of this head.
    assert chips["label"].tolist() == before["label"].tolist()
    np.testing.assert_allclose(chips["score"], before["score"], rtol=1e-6)
    frame = geobimors.map_scene(
        scene, labels_file, model=tiny_model, chip_size=32,
        captions=CaptionerSpec(tiny_blip, max_new_tokens=3, num_beams=1),
    )  # fmt: skip
    assert frame["caption"].tolist() == chips["caption"].tolist()
    # The captioner is part of the run's fingerprint: a captioned run never resumes a plain one's parts.
    settings = MapSettings(scene=str(scene), labels=tuple(read_labels(labels_file)), model=tiny_model, chip_size="32")
    spec = CaptionerSpec(tiny_blip, 3, 1)
    assert plan_map(settings).fingerprint() != plan_map(replace(settings, captioner=spec)).fingerprint()
    assert plan_map(replace(settings, captioner=spec)).describe()["captioner"] == tiny_blip


def test_top_k_and_band_options(
    capsys: pytest.CaptureFixture[str],
    tiny_model: str,
    labels_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Four bands, each one constant value: the chips that reach the model show which bands were read.
    values = (10, 80, 160, 240)
    data = np.stack([np.full((48, 48), v, dtype=np.uint8) for v in values])
    scene = make_geotiff(tmp_path / "four.tif", data, photometric="MINISBLACK")
    seen: list[np.ndarray] = []
    classify = Classifier.classify

    def recording(self: Classifier, chips: np.ndarray, captions: object = None) -> object:
        seen.append(chips.copy())
        return classify(self, chips, captions)  # type: ignore[arg-type]

    monkeypatch.setattr(Classifier, "classify", recording)
    out = tmp_path / "out.gpkg"
    args = ["map", scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "16", "--top-k", "1", "-o", out]
    result = run_cli(capsys, *args, "--bands", "3,2,1")
    assert result.exit_code == 0, result.err
    chips = read_chips(out)
    assert len(chips) == 9 and "label_2" not in chips.columns and "score_2" not in chips.columns
    pixels = np.concatenate(seen)
    assert pixels.shape == (9, 16, 16, 3)
    assert (pixels == np.array([160, 80, 10], dtype=np.uint8)).all()  # red = band 3, green = 2, blue = 1
    seen.clear()
    assert run_cli(capsys, *args, "--bands", "4,1,2", "--overwrite").exit_code == 0
    assert (np.concatenate(seen) == np.array([240, 10, 80], dtype=np.uint8)).all()


def test_overwrite_rules(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.gpkg"
    out.write_bytes(b"precious")
    args = ["map", rgb_scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "32", "-o", out]
    assert_one_line_error(run_cli(capsys, *args), 2, "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    assert run_cli(capsys, *args, "--overwrite").exit_code == 0
    assert len(read_chips(out)) == 12


class _InterruptAfter(LocalExecutor):
    """Delivers ``n`` batches, then behaves like Ctrl-C."""

    def __init__(self, n: int) -> None:
        super().__init__(threads=1)
        self.n = n

    def map(self, fn, tasks):  # type: ignore[no-untyped-def]
        for i, outcome in enumerate(super().map(fn, tasks)):
            if i == self.n:
                raise KeyboardInterrupt
            yield outcome


def test_interrupted_run_resumes_to_the_same_output(
    tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    settings = MapSettings(
        scene=str(rgb_scene),
        labels=tuple(read_labels(labels_file)),
        model=tiny_model,
        chip_size="16",
        batch_size=8,
        device="cpu",
    )
    plan = plan_map(settings)
    reference = tmp_path / "reference.gpkg"
    map_to_file(plan, reference, progress_mode="none")
    out = tmp_path / "out.gpkg"
    with pytest.raises(KeyboardInterrupt):
        map_to_file(plan, out, progress_mode="none", executor=_InterruptAfter(3))
    assert not out.exists()
    assert len(list(store_path(out).glob("batch-*.parquet"))) == 3
    summary = map_to_file(plan, out, progress_mode="none")
    assert summary.resumed_chips == 3 * 8
    assert not store_path(out).exists()
    a, b = read_chips(reference), read_chips(out)
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert all(x.equals_exact(y, 0) for x, y in zip(a.geometry, b.geometry))
    # Other settings do not mix into a stored run.
    with pytest.raises(KeyboardInterrupt):
        map_to_file(plan, tmp_path / "other.gpkg", progress_mode="none", executor=_InterruptAfter(1))
    changed = plan_map(MapSettings(**{**settings.__dict__, "top_k": 2}))
    with pytest.raises(geobimors.errors.InputError, match="--restart"):
        map_to_file(changed, tmp_path / "other.gpkg", progress_mode="none")
    map_to_file(changed, tmp_path / "other.gpkg", progress_mode="none", restart=True)
    assert "label_3" not in read_chips(tmp_path / "other.gpkg").columns


def test_real_scenes(
    capsys: pytest.CaptureFixture[str], tiny_model: str, shared_scenes: Path, labels_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rgb.gpkg"
    result = run_cli(
        capsys,
        "map",
        shared_scenes / "RGB.byte.tif",
        "-l",
        labels_file,
        "-m",
        tiny_model,
        "--chip-size",
        "64",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.err
    assert "skipped" in result.out
    chips = read_chips(out)
    assert chips.crs.to_epsg() == 32618 and 0 < len(chips) < 13 * 12
    out = tmp_path / "landsat.gpkg"
    result = run_cli(
        capsys,
        "map",
        shared_scenes / "L7_ETMs.tif",
        "-l",
        labels_file,
        "-m",
        tiny_model,
        "--chip-size",
        "1.5km",
        "--bands",
        "3,2,1",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.err
    # 1500 m / 28.5 m = 53 px chips over 349 x 352 px: a 7 x 7 grid whose bottom-right chip
    # is only 31 x 34 px of scene (37% valid, below --min-valid 0.5).
    assert len(read_chips(out)) == 7 * 7 - 1


def test_scene_without_crs(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    scene = make_geotiff(tmp_path / "nocrs.tif", random_rgb(32, 32), crs=None)
    out = tmp_path / "out.gpkg"
    args = ["map", scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "16", "-o", out]
    assert_one_line_error(run_cli(capsys, *args), 2, "no CRS", "--allow-no-crs")
    assert not out.exists()
    result = run_cli(capsys, *args, "--allow-no-crs")
    assert result.exit_code == 0 and "Warning: scene nocrs.tif has no CRS" in result.err
    assert read_chips(out).crs is None


def _bad_input_cases(tmp: Path, scene: Path, labels: Path) -> list[tuple[list[str], tuple[str, ...]]]:
    text = tmp / "notes.txt"
    text.write_text("not a raster")
    empty = tmp / "empty.txt"
    empty.write_text("# nothing\n")
    dup = tmp / "dup.txt"
    dup.write_text("forest\nwater\nForest\n")
    single = tmp / "single.txt"
    single.write_text("forest\n")
    return [
        ([str(tmp / "missing.tif"), "-l", str(labels)], ("scene not found",)),
        ([str(text), "-l", str(labels)], ("not a raster",)),
        ([str(scene), "-l", str(labels), "--bands", "4,2,1"], ("band 4 is out of range", "1 to 3")),
        ([str(scene), "-l", str(tmp / "nolabels.txt")], ("labels file not found",)),
        ([str(scene), "-l", str(empty)], ("no labels",)),
        ([str(scene), "-l", str(dup)], ("duplicate label", "forest")),
        ([str(scene), "-l", str(single)], ("single label",)),
        ([str(scene), "-l", str(labels), "--chip-size", "512"], ("larger than scene", "--chip-size")),
        ([str(scene), "-l", str(labels), "-o", str(tmp / "nodir" / "out.gpkg")], ("does not exist",)),
        ([str(scene), "-l", str(labels), "-m", "ViT-Q-99:openai"], ("unknown model",)),
        ([str(scene), "-l", str(labels), "-o", str(tmp / "out.shp")], (".gpkg",)),
        ([str(scene), "-l", str(labels), "--chip-size", "abc"], ("--chip-size", "not a length")),
        ([str(scene), "-l", str(labels), "--overlap", "64"], ("--overlap",)),
    ]


def test_bad_inputs_one_line_exit_2_no_output(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for args, fragments in _bad_input_cases(tmp_path, rgb_scene, labels_file):
            before = sorted(p.name for p in tmp_path.iterdir())
            model = [] if "-m" in args else ["-m", tiny_model]
            result = (
                run_cli(capsys, "map", *args, *model, "--chip-size", "32")
                if "--chip-size" not in args
                else run_cli(capsys, "map", *args, *model)
            )
            assert_one_line_error(result, 2, *fragments)
            assert sorted(p.name for p in tmp_path.iterdir()) == before, args
    finally:
        os.chdir(cwd)


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path, labels_file: Path) -> None:
    from geobimors.errors import InputError

    with pytest.raises(InputError):
        from geobimors.cli import main

        main(["map", str(tmp_path / "missing.tif"), "-l", str(labels_file), "--debug"])


def test_console_script(tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("geobimors")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"geobimors, version {geobimors.__version__}"
    help_text = subprocess.run([exe, "map", "--help"], capture_output=True, text=True, check=True).stdout
    for option in (
        "--labels",
        "--chip-size",
        "--overlap",
        "--gsd",
        "--bands",
        "--batch-size",
        "--top-k",
        "--device",
        "--precision",
        "--overwrite",
        "--quiet",
    ):
        assert option in help_text
    bad = subprocess.run(
        [exe, "map", str(tmp_path / "nope.tif"), "-l", str(labels_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert bad.returncode == 2 and bad.stderr.startswith("Error: scene not found") and "Traceback" not in bad.stderr

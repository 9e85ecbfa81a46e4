"""geobimors assess: metrics against hand-computed values, raster and polygon references, mixed chips, the CLI."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

import geobimors
from geobimors.accuracy import Assessment, assess, cohen_kappa, overall_accuracy, per_class_scores

from cli_helpers import assert_one_line_error, run_cli
from rasters import UTM32N, make_geotiff

ROOT = Path(__file__).resolve().parents[1]
X0, Y0 = 500_000.0, 5_000_000.0


def test_metrics_match_hand_computed_values() -> None:
    # rows: reference, columns: map
    confusion = np.array([[5, 1], [2, 2]])
    assert overall_accuracy(confusion) == pytest.approx(0.7)
    # p_o = 0.7; p_e = (6 * 7 + 4 * 3) / 100 = 0.54; kappa = 0.16 / 0.46
    assert cohen_kappa(confusion) == pytest.approx(0.16 / 0.46)
    scores = per_class_scores(confusion)
    np.testing.assert_allclose(scores["precision"], [5 / 7, 2 / 3])
    np.testing.assert_allclose(scores["recall"], [5 / 6, 2 / 4])
    np.testing.assert_allclose(
        scores["f1"], [2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)]
    )
    assert cohen_kappa(np.array([[3, 0], [0, 3]])) == pytest.approx(1.0)


def test_map_labels_outside_the_reference_classes_count_as_errors() -> None:
    # Reference classes forest, water; the map also says 'crop', which is no reference class.
    # rows: reference, columns: map (forest, water, crop)
    confusion = np.array([[3, 1, 6], [2, 4, 2]])
    #   support (whole row):  forest 3 + 1 + 6 = 10, water 2 + 4 + 2 = 8   (K x K part only: 4 and 6)
    #   recall:               forest 3 / 10 = 0.3,   water 4 / 8 = 0.5      (K x K part only: 0.75, 2/3)
    #   precision (column):   forest 3 / 5 = 0.6,    water 4 / 5 = 0.8      (crop chips are in no reference column)
    #   F1:                   forest 2 * 0.6 * 0.3 / 0.9 = 0.4, water 2 * 0.8 * 0.5 / 1.3 = 8/13
    #                         (K x K part only: 2/3 and 8/11)
    #   macro F1:             (0.4 + 8/13) / 2 = 33/65
    #   overall accuracy:     (3 + 4) / 18 = 7/18   (K x K part only: 7 / 10)
    #   kappa: p_o = 7/18, p_e = (10 * 5 + 8 * 5) / 18**2 = 90/324, kappa = (126 - 90) / (324 - 90) = 2/13
    #                         (K x K part only: p_o = 0.7, p_e = 0.5, kappa = 0.4)
    #   majority baseline:    forest, 10 / 18 = 5/9   (K x K part only: water, 6 / 10)
    scores = per_class_scores(confusion)
    np.testing.assert_allclose(scores["support"], [10, 8])
    np.testing.assert_allclose(scores["recall"], [0.3, 0.5])
    np.testing.assert_allclose(scores["precision"], [0.6, 0.8])
    np.testing.assert_allclose(scores["f1"], [0.4, 8 / 13])
    assert overall_accuracy(confusion) == pytest.approx(7 / 18)
    assert cohen_kappa(confusion) == pytest.approx(2 / 13)
    with pytest.raises(ValueError, match="K x"):
        per_class_scores(confusion.T)
    # Areas: the crop chips under forest are twice as large (2 each) as the others (1 each).
    # Area-weighted overall accuracy: 7 / (3 + 1 + 12 + 2 + 4 + 2) = 7/24   (K x K part only: 7 / 10)
    area_confusion = confusion * np.array([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    chips = [{"purity": 1.0}] * 18
    result = Assessment(["forest", "water"], confusion, area_confusion, chips, np.array([16.0, 8.0]), "km2", ["crop"])
    report = result.to_dict()  # figures rounded to 6 decimals
    assert report["chips_scored"] == 18
    assert report["overall_accuracy"] == pytest.approx(7 / 18, abs=1e-6)
    assert report["kappa"] == pytest.approx(2 / 13, abs=1e-6)
    assert report["majority_class"] == "forest"
    assert report["majority_baseline_accuracy"] == pytest.approx(5 / 9, abs=1e-6)
    expected = {"forest": (0.6, 0.3, 0.4, 10, 5), "water": (0.8, 0.5, 8 / 13, 8, 5)}
    for name, (precision, recall, f1, support, mapped_chips) in expected.items():
        row = report["per_class"][name]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx([precision, recall, f1], abs=1e-6)
        assert (row["support"], row["mapped_chips"]) == (support, mapped_chips)
    assert report["macro_f1"] == pytest.approx(33 / 65, abs=1e-6)
    assert report["area_weighted"]["overall_accuracy"] == pytest.approx(7 / 24, abs=1e-6)
    assert report["area_weighted"]["mapped_area"] == {"forest": 5.0, "water": 5.0, "crop": 14.0}
    # The printed table and the CSV carry the same figures.
    lines = result.lines()
    assert "  forest      0.600   0.300  0.400       10" in lines
    assert "  water       0.800   0.500  0.615        8" in lines
    rows = list(csv.reader(io.StringIO(result.csv_text())))
    assert rows[1][:6] == ["forest", "0.6", "0.3", "0.4", "10", "5"]
    assert rows[2][:6] == ["water", "0.8", "0.5", "0.615385", "8", "5"]
    assert ["overall_accuracy", "0.388889"] in rows and ["kappa", "0.153846"] in rows
    assert ["majority_baseline_accuracy", "0.555556"] in rows
    assert ["area_weighted_overall_accuracy", "0.291667"] in rows


def _map(path: Path, labels: list[str], size: float = 100.0) -> Path:
    """A geobimors-like map: one row of chips of ``size`` m with these labels."""
    chips = [shapely.box(X0 + i * size, Y0 - size, X0 + (i + 1) * size, Y0) for i in range(len(labels))]
    frame = gpd.GeoDataFrame(
        {"label": labels, "row": [0] * len(labels), "col": list(range(len(labels)))}, geometry=chips, crs=UTM32N
    )
    frame.to_file(path, layer="chips")
    return path


def test_raster_reference_with_mixed_chips_and_a_mapping(tmp_path: Path) -> None:
    # 4 chips of 10 x 10 px (10 m): reference codes per chip: all 1; 70% 1 + 30% 2; all 2; all nodata.
    codes = np.zeros((10, 40), dtype=np.uint8)
    codes[:, :10] = 1
    codes[:, 10:17] = 1
    codes[:, 17:20] = 2
    codes[:, 20:30] = 2
    reference = make_geotiff(tmp_path / "ref.tif", codes, nodata=0)
    map_path = _map(tmp_path / "map.gpkg", ["forest", "water", "water", "forest"])
    mapping = tmp_path / "mapping.csv"
    mapping.write_text("map label,reference class\nforest,1\nwater,2\n")
    result = assess(map_path, reference, mapping)
    report = result.to_dict()
    assert report["chips_scored"] == 3 and report["chips_unscored"] == 1  # the nodata chip is not scored
    assert result.classes == ["1: forest", "2: water"]
    assert result.confusion.tolist() == [[1, 1], [0, 1]]
    assert report["overall_accuracy"] == pytest.approx(2 / 3)
    assert [c["purity"] for c in result.chips] == pytest.approx([1.0, 0.7, 1.0])
    assert report["majority_baseline_accuracy"] == pytest.approx(2 / 3)
    # Areas: chips are 0.01 km2; the reference area counts the mixed chip by its fractions.
    assert report["area_weighted"]["unit"] == "km2"
    assert report["area_weighted"]["reference_area"] == {
        "1: forest": pytest.approx(0.017),
        "2: water": pytest.approx(0.013),
    }
    assert report["area_weighted"]["overall_accuracy"] == pytest.approx(2 / 3)
    # Only pure chips.
    assert assess(map_path, reference, mapping, min_purity=0.9).confusion.tolist() == [[1, 0], [0, 1]]


def test_polygon_reference_without_mapping(tmp_path: Path) -> None:
    map_path = _map(tmp_path / "map.gpkg", ["Forest", "water", "urban"])
    polygons = gpd.GeoDataFrame(
        {"cover": ["forest", "water"]},
        geometry=[shapely.box(X0, Y0 - 100, X0 + 160, Y0), shapely.box(X0 + 160, Y0 - 100, X0 + 300, Y0)],
        crs=UTM32N,
    )
    polygons.to_file(tmp_path / "ref.gpkg")
    result = assess(map_path, tmp_path / "ref.gpkg", class_column="cover")
    # Chip 2 is 60% forest, 40% water -> forest by majority; the map's 'urban' is not a reference class.
    assert result.classes == ["forest", "water"] and result.extra_map_classes == ["urban"]
    assert result.confusion.tolist() == [[1, 1, 0], [0, 0, 1]]
    assert result.to_dict()["overall_accuracy"] == pytest.approx(1 / 3, abs=1e-6)
    # The water chip mapped 'urban' is a water error: support 1, recall 0 / 1 (not support 0, no recall).
    water = result.to_dict()["per_class"]["water"]
    assert (water["support"], water["recall"], water["precision"], water["f1"]) == (1, 0.0, 0.0, 0.0)
    assert [c["purity"] for c in result.chips] == pytest.approx([1.0, 0.6, 1.0])
    # The package-level API, twice (a module of the same name must not shadow it).
    for _ in range(2):
        again = geobimors.assess(map_path, tmp_path / "ref.gpkg", class_column="cover")
        assert again.confusion.tolist() == result.confusion.tolist()


def test_a_reference_without_crs_is_assumed_in_the_maps_crs_and_said_so(tmp_path: Path) -> None:
    """A reference with no CRS (a hand-made shapefile without .prj, a bare raster) is read in the map's CRS,
    with a warning that names it; the figures are those of the same reference with the CRS."""
    map_path = _map(tmp_path / "map.gpkg", ["forest", "water"])
    geometry = [shapely.box(X0, Y0 - 100, X0 + 100, Y0), shapely.box(X0 + 100, Y0 - 100, X0 + 200, Y0)]
    gpd.GeoDataFrame({"label": ["forest", "forest"]}, geometry=geometry, crs=UTM32N).to_file(tmp_path / "with.gpkg")
    gpd.GeoDataFrame({"label": ["forest", "forest"]}, geometry=geometry).to_file(tmp_path / "without.gpkg")
    with_crs = assess(map_path, tmp_path / "with.gpkg")
    assumed = r"without.gpkg has no CRS; assumed to be in the CRS of the map \(EPSG:32632\)"
    with pytest.warns(UserWarning, match=assumed):
        without = assess(map_path, tmp_path / "without.gpkg")
    assert without.confusion.tolist() == with_crs.confusion.tolist() == [[1, 1]]
    codes = np.ones((10, 20), dtype=np.uint8)
    reference = make_geotiff(tmp_path / "bare.tif", codes, crs=None)
    mapping = tmp_path / "mapping.csv"
    mapping.write_text("map label,reference class\nforest,1\nwater,2\n")
    with pytest.warns(UserWarning, match="bare.tif has no CRS"):
        assert assess(map_path, reference, mapping).to_dict()["chips_scored"] == 2


def test_assess_cli_writes_reports_and_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    codes = np.ones((10, 20), dtype=np.uint8)
    codes[:, 10:] = 2
    reference = make_geotiff(tmp_path / "ref.tif", codes)
    map_path = _map(tmp_path / "map.gpkg", ["a", "b"])
    (tmp_path / "m.csv").write_text("a,1\nb,1\n")
    out = tmp_path / "report.json"
    result = run_cli(capsys, "assess", map_path, "--reference", reference, "--mapping", tmp_path / "m.csv", "-o", out)
    assert result.exit_code == 0, result.err
    assert "overall accuracy: 0.5" in result.out and "kappa: 0.0" in result.out
    report = json.loads(out.read_text())
    assert report["per_class"]["1"]["precision"] == 0.5 and report["per_class"]["2"]["recall"] == 0.0
    rows = list(csv.reader((tmp_path / "report.chips.csv").open()))
    assert rows[0][:6] == ["row", "col", "map_label", "map_class", "reference_class", "purity"] and len(rows) == 3
    again = run_cli(capsys, "assess", map_path, "--reference", reference, "--mapping", tmp_path / "m.csv", "-o", out)
    assert_one_line_error(again, 2, "already exists", "--overwrite")
    result = run_cli(capsys, "assess", map_path, "--reference", reference)
    assert_one_line_error(result, 2, "--mapping")
    (tmp_path / "bad.csv").write_text("a,1\n")
    result = run_cli(capsys, "assess", map_path, "--reference", reference, "--mapping", tmp_path / "bad.csv")
    assert_one_line_error(result, 2, "no row for map label", "'b'")


@pytest.mark.slow
def test_zero_shot_mini_on_a_small_eurosat_mosaic(
    capsys: pytest.CaptureFixture[str], eurosat: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_reference_scene import build_scene

    from geobimors.class_names import EUROSAT

    layout, folders = build_scene(eurosat / "val", tmp_path / "scene.tif", tmp_path / "labels.tif", cells=4, seed=0)
    names = [EUROSAT[f] for f in folders]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "mapping.csv").write_text("".join(f"{n},{k + 1}\n" for k, n in enumerate(names)))
    out = tmp_path / "map.gpkg"
    result = run_cli(capsys, "map", tmp_path / "scene.tif", "-l", tmp_path / "labels.txt", "-o", out, "-q")
    assert result.exit_code == 0, result.err
    result = run_cli(
        capsys, "assess", out, "--reference", tmp_path / "labels.tif", "--mapping", tmp_path / "mapping.csv", "-q",
        "-o", tmp_path / "report",
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chips_scored"] == 16 and report["mean_purity"] == 1.0
    truth = [names[k] for k in layout.ravel()]
    chips = gpd.read_file(out, layer="chips").sort_values(["row", "col"])
    expected = np.mean([a == b for a, b in zip(chips["label"], truth)])
    assert report["overall_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert report["overall_accuracy"] > report["majority_baseline_accuracy"]


def test_bad_maps_and_invalid_reference_polygons(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A self-intersecting reference polygon is repaired (with a warning), not a GEOS crash; an embeddings
    store or a map without classified chips is refused with what to do."""
    map_path = _map(tmp_path / "map.gpkg", ["forest", "water"])
    # A bow tie over both chips: its two lobes are the two triangles meeting at the chips' shared corner.
    bow_tie = shapely.Polygon([(X0, Y0), (X0 + 200, Y0 - 100), (X0 + 200, Y0), (X0, Y0 - 100)])
    assert not bow_tie.is_valid
    gpd.GeoDataFrame({"label": ["forest"]}, geometry=[bow_tie], crs=UTM32N).to_file(tmp_path / "ref.gpkg")
    with pytest.warns(UserWarning, match="not valid geometries; repaired"):
        result = assess(map_path, tmp_path / "ref.gpkg", min_cover=0.2)
    # Each chip is half covered by one lobe: both chips have forest as reference, the water chip is an error.
    assert result.classes == ["forest"] and result.confusion.tolist() == [[1, 1]]
    store = tmp_path / "scene.parquet"
    store.write_bytes(b"PAR1")
    cli = run_cli(capsys, "assess", store, "-r", tmp_path / "ref.gpkg")
    assert_one_line_error(cli, 2, "embeddings store", "map --from-embeddings")
    empty = _map(tmp_path / "empty.gpkg", [None])  # type: ignore[list-item]
    assert_one_line_error(run_cli(capsys, "assess", empty, "-r", tmp_path / "ref.gpkg"), 2, "no classified chip")

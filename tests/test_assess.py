"""geobimors assess: metrics against hand-computed values, raster and polygon references, mixed chips, the CLI."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

import geobimors
from geobimors.accuracy import assess, cohen_kappa, overall_accuracy, per_class_scores

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
    assert result.to_dict()["overall_accuracy"] == pytest.approx(1 / 3)
    assert [c["purity"] for c in result.chips] == pytest.approx([1.0, 0.6, 1.0])
    # The package-level API, twice (a module of the same name must not shadow it).
    for _ in range(2):
        again = geobimors.assess(map_path, tmp_path / "ref.gpkg", class_column="cover")
        assert again.confusion.tolist() == result.confusion.tolist()


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

"""The plugin in a real (headless) QGIS 3.22: load, Processing, dock panel, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import geobimors_qgis
import processing
from geobimors_qgis.runner import MapRequest, build_args, command_prefix, run_map
from qgis.core import Qgis, QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer

from conftest import EXECUTABLE, SAMPLE, wait_for

LABELS = ["residential buildings", "forest", "sea or lake", "annual crop land"]


def categories(layer: QgsVectorLayer) -> list[str]:
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "label"
    return [c.value() for c in renderer.categories()]


def test_plugin_loads_and_registers_the_algorithm(iface) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initGui()
    registry = QgsApplication.processingRegistry()
    assert registry.providerById("geobimors") is not None
    algorithm = registry.algorithmById("geobimors:mapscene")
    assert algorithm is not None and algorithm.displayName() == "Map scene (geobimors)"
    assert algorithm.parameterDefinition("DETAIL_VIEWS").defaultValue() == 0  # detail views: opt-in
    assert algorithm.parameterDefinition("LITERAL_LABELS").defaultValue() is False  # label anchoring: on
    assert len(iface.toolbar) == 1 and len(iface.menu) == 2
    panel = plugin.toggle_panel()
    assert panel in iface.docks
    plugin.unload()
    assert registry.providerById("geobimors") is None and not iface.toolbar and not iface.docks


def test_processing_run_gives_a_categorized_layer(iface, small_scene: Path, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initProcessing()
    try:
        out = tmp_path / "recife.gpkg"
        result = processing.run(
            "geobimors:mapscene",
            {
                "INPUT": str(small_scene),
                "LABELS": "\n".join(LABELS),
                "MODEL": "mini",
                "BANDS": "3,2,1",
                "CAPTIONER": "mini",
                "TTA": 3,  # 8 turned/mirrored views per chip
                "OUTPUT": str(out),
            },
        )
        assert result["OUTPUT"] == str(out) and out.exists()
        layer = QgsVectorLayer(f"{out}|layername=chips", "chips", "ogr")
        assert layer.isValid() and layer.featureCount() == 5 * 5
        assert categories(layer) == LABELS  # the style stored in the GeoPackage, loaded by QGIS itself
        assert layer.crs().authid() == "EPSG:31985"
        # Every chip's caption is an attribute: what Identify and the attribute table show.
        captions = [feature["caption"] for feature in layer.getFeatures()]
        assert len(captions) == 25 and all(isinstance(c, str) and c for c in captions)
    finally:
        plugin.unload()


def test_processing_reports_cli_errors(iface, small_scene: Path, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initProcessing()
    try:
        raised = None
        try:
            processing.run(
                "geobimors:mapscene",
                {
                    "INPUT": str(small_scene),
                    "LABELS": "forest\nsea",
                    "MODEL": "mini",
                    "OUTPUT": str(tmp_path / "o.gpkg"),
                },
            )
        except Exception as exc:  # QgsProcessingException
            raised = str(exc)
        assert raised is not None and "pass --bands" in raised  # the CLI's one-line message
    finally:
        plugin.unload()


def test_dock_panel_runs_and_adds_the_layer(iface, small_scene: Path, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initGui()
    try:
        raster = QgsRasterLayer(str(small_scene), "recife")
        QgsProject.instance().addMapLayer(raster)
        panel = plugin.toggle_panel()
        panel.raster.setLayer(raster)
        panel.labels.setPlainText("\n".join(LABELS))
        panel.model.setText("mini")
        panel.bands.setText("3,2,1")
        assert "--captions" not in build_args(panel.request(), None)
        panel.captions.setChecked(True)
        out = tmp_path / "panel.gpkg"
        panel.output.setFilePath(str(out))
        task = panel.run()
        assert task is not None
        wait_for(lambda: panel.task is None)
        added = [layer for layer in QgsProject.instance().mapLayers().values() if layer.name().startswith("geobimors")]
        assert len(added) == 1 and categories(added[0]) == LABELS
        assert "caption" in added[0].fields().names()
        assert all(isinstance(feature["caption"], str) for feature in added[0].getFeatures())
        order = [node.layer() for node in QgsProject.instance().layerTreeRoot().findLayers()]
        assert order.index(added[0]) < order.index(raster)  # drawn above the raster
        assert panel.progress.value() == 100
        assert any("added" in text for text, level in iface.bar.messages if level == Qgis.Success)
    finally:
        QgsProject.instance().clear()
        plugin.unload()


def test_broken_environment_is_explained(iface, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initGui()
    try:
        panel = plugin.toggle_panel()
        panel.raster_file.setFilePath(str(SAMPLE / "cogeo.tif"))
        panel.executable.setText(str(tmp_path / "no-such-geobimors"))
        assert panel.run() is None
        text, level = iface.bar.messages[-1]
        assert level == Qgis.Critical and "not an executable file" in text and "pip install geobimors" in text
        panel.executable.setText("/bin/false")
        assert panel.check() is None
        text, level = iface.bar.messages[-1]
        assert level == Qgis.Critical and "--version failed" in text
        panel.executable.setText(EXECUTABLE)
        assert panel.check().startswith("geobimors, version")
    finally:
        plugin.unload()


def test_arguments_never_go_through_a_shell(tmp_path: Path) -> None:
    # A stand-in for the CLI that records what it was started with; the real run_map starts it.
    record = tmp_path / "started-with.json"
    fake = tmp_path / "fake-geobimors"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "labels = open(args[args.index('--labels') + 1], encoding='utf-8').read()\n"
        f"json.dump({{'args': args, 'labels': labels}}, open({str(record)!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    marker = tmp_path / "a-shell-ran-this"
    scene = f"a b; touch {marker}"
    output = f"o.gpkg $(touch {marker}) && touch {marker}"
    request = MapRequest(
        scene=scene, output=output, labels=["forest", f"`touch {marker}`"], model="mini", bands="3,2,1"
    )
    result = run_map(command_prefix(str(fake)), request)
    assert not marker.exists()  # no shell ever saw the arguments
    assert (result.returncode, result.error) == (0, None)
    started = json.loads(record.read_text())
    args = started["args"]
    assert args[:2] == ["map", scene] and args[args.index("-o") + 1] == output
    assert args[args.index("--bands") + 1] == "3,2,1" and args[args.index("--progress") + 1] == "jsonl"
    assert started["labels"] == f"forest\n`touch {marker}`\n"
    assert not Path(args[args.index("--labels") + 1]).exists()  # the temporary labels file is removed


def test_test_time_augmentation_is_opt_in() -> None:
    assert "--tta" not in build_args(MapRequest(scene="a.tif", output="o.gpkg"), None)
    args = build_args(MapRequest(scene="a.tif", output="o.gpkg", tta=8), None)
    assert args[args.index("--tta") + 1] == "8"
    assert "--views" not in build_args(MapRequest(scene="a.tif", output="o.gpkg"), None)
    args = build_args(MapRequest(scene="a.tif", output="o.gpkg", views=6), None)
    assert args[args.index("--views") + 1] == "6"


def test_literal_labels_is_opt_in() -> None:
    assert "--literal-labels" not in build_args(MapRequest(scene="a.tif", output="o.gpkg"), None)
    assert "--literal-labels" in build_args(MapRequest(scene="a.tif", output="o.gpkg", literal_labels=True), None)


def test_network_reach_is_opt_in() -> None:
    assert "--allow-network" not in build_args(MapRequest(scene="a.vrt", output="o.gpkg"), None)
    assert "--allow-network" in build_args(MapRequest(scene="a.vrt", output="o.gpkg", allow_network=True), None)


def _map_and_reference(tmp_path: Path) -> tuple[Path, Path]:
    """A 2 x 2-chip map GeoPackage (labels a, a, b, b) and a reference raster (codes 1, 2, 2, 2) with GDAL/OGR."""
    from osgeo import gdal, ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    map_path = tmp_path / "map.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(map_path))
    layer = source.CreateLayer("chips", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("label", ogr.OFTString))
    for (row, col), label in zip([(0, 0), (0, 1), (1, 0), (1, 1)], ["a", "a", "b", "b"]):
        x0, y0 = 500_000 + col * 100, 5_000_000 - row * 100
        ring = f"POLYGON(({x0} {y0},{x0 + 100} {y0},{x0 + 100} {y0 - 100},{x0} {y0 - 100},{x0} {y0}))"
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("label", label)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(ring))
        layer.CreateFeature(feature)
    source = None
    reference = tmp_path / "reference.tif"
    raster = gdal.GetDriverByName("GTiff").Create(str(reference), 20, 20, 1, gdal.GDT_Byte)
    raster.SetGeoTransform((500_000, 10, 0, 5_000_000, 0, -10))
    raster.SetProjection(srs.ExportToWkt())
    import numpy as np

    codes = np.full((20, 20), 2, dtype=np.uint8)
    codes[:10, :10] = 1
    raster.GetRasterBand(1).WriteArray(codes)
    raster = None
    return map_path, reference


def test_assess_accuracy_algorithm_reports_the_cli_figures(iface, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initProcessing()
    try:
        algorithm = QgsApplication.processingRegistry().algorithmById("geobimors:assessaccuracy")
        assert algorithm is not None and algorithm.displayName() == "Assess accuracy (geobimors)"
        map_path, reference = _map_and_reference(tmp_path)
        mapping = tmp_path / "mapping.csv"
        mapping.write_text("a,1\nb,2\n")
        out = tmp_path / "report.json"
        parameters = {"MAP": str(map_path), "REFERENCE": str(reference), "MAPPING": str(mapping), "OUTPUT": str(out)}
        result = processing.run("geobimors:assessaccuracy", parameters)
        # Reference 1,2,2,2 against map 1,1,2,2: 3 of 4 agree; kappa = (0.75 - 0.5) / (1 - 0.5).
        assert result["OVERALL_ACCURACY"] == 0.75 and abs(result["KAPPA"] - 0.5) < 1e-6
        assert out.exists() and (tmp_path / "report.csv").exists() and (tmp_path / "report.chips.csv").exists()
        raised = None
        try:
            processing.run("geobimors:assessaccuracy", {**parameters, "MAPPING": None})
        except Exception as exc:  # QgsProcessingException with the CLI's one-line message
            raised = str(exc)
        assert raised is not None and "--mapping" in raised
    finally:
        plugin.unload()


def test_map_and_search_tasks_report_the_cli_error_line(tmp_path: Path) -> None:
    from geobimors_qgis.runner import SearchRequest
    from geobimors_qgis.task import MapTask, SearchTask

    fake = tmp_path / "failing-geobimors"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write('Error: no such scene; check the path\\n')\nsys.exit(2)\n"
    )
    fake.chmod(0o755)
    for task_class, request in (
        (MapTask, MapRequest(scene="nope.tif", output=str(tmp_path / "o.gpkg"), labels=["forest"])),
        (
            SearchTask,
            SearchRequest(store=str(tmp_path / "s.parquet"), output=str(tmp_path / "h.gpkg"), queries=["a port"]),
        ),
    ):
        reported = []
        task = task_class(
            command_prefix(str(fake)), request, lambda result, error, seen=reported: seen.append((result, error))
        )
        assert "nope.tif" in task.description(request) or "s.parquet" in task.description(request)
        assert task.run() is False
        task.finished(False)
        ((result, error),) = reported
        assert result.returncode == 2 and error == "no such scene; check the path", (task_class, error)

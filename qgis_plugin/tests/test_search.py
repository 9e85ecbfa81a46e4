"""The search box of the panel and the "Search embeddings" Processing algorithm (they run `geobimors search`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geobimors_qgis
import processing
import pytest
from geobimors_qgis.runner import SearchRequest, build_search_args
from qgis.core import Qgis, QgsApplication, QgsFeature, QgsGeometry, QgsPointXY, QgsProject, QgsVectorLayer

from conftest import EXECUTABLE, SAMPLE, wait_for

CLICK = (294100.0, 9119190.0)  # a point of the Recife scene, in its CRS (EPSG:31985)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Recife sample scene embedded with the bundled model."""
    out = tmp_path_factory.mktemp("store") / "recife.parquet"
    subprocess.run(
        [EXECUTABLE, "embed", str(SAMPLE / "L7_ETMs.tif"), "--bands", "3,2,1", "-m", "mini", "-o", str(out), "-q"],
        check=True,
    )
    return out


def test_search_algorithm_text_queries_give_a_styled_hits_layer(iface, store: Path, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initProcessing()
    try:
        algorithm = QgsApplication.processingRegistry().algorithmById("geobimors:searchembeddings")
        assert algorithm is not None and algorithm.displayName() == "Search embeddings (geobimors)"
        out, heat = tmp_path / "hits.gpkg", tmp_path / "heat.tif"
        result = processing.run(
            "geobimors:searchembeddings",
            {
                "STORE": str(store),
                "QUERIES": "forest\nsea or lake",
                "K": 5,
                "OUTPUT": str(out),
                "OUTPUT_RASTER": str(heat),
            },
        )
        assert result["OUTPUT"] == str(out) and result["OUTPUT_RASTER"] == str(heat) and heat.exists()
        layer = QgsVectorLayer(f"{out}|layername=hits", "hits", "ogr")
        assert layer.isValid() and layer.featureCount() == 10
        renderer = layer.renderer()  # the style stored in the file, loaded by QGIS itself
        assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "query"
        assert [c.value() for c in renderer.categories()] == ["forest", "sea or lake"]
        assert layer.crs().authid() == "EPSG:31985"
        assert "torch" not in sys.modules
    finally:
        plugin.unload()


def test_search_algorithm_with_an_examples_layer(iface, store: Path, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initProcessing()
    try:
        centre = QgsPointXY(*CLICK)
        examples = QgsVectorLayer("Point?crs=EPSG:31985", "clicks", "memory")
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromPointXY(centre))
        examples.dataProvider().addFeatures([feature])
        out = tmp_path / "like.gpkg"
        processing.run(
            "geobimors:searchembeddings", {"STORE": str(store), "LIKE": examples, "K": 3, "OUTPUT": str(out)}
        )
        layer = QgsVectorLayer(f"{out}|layername=hits", "hits", "ogr")
        best = next(layer.getFeatures())
        assert best["rank"] == 1 and best["score"] > 0.999  # the chip under the click finds itself first
        assert best.geometry().contains(QgsGeometry.fromPointXY(centre))
        assert layer.renderer().type() == "graduatedSymbol"
        with pytest.raises(Exception, match="give text queries"):
            processing.run("geobimors:searchembeddings", {"STORE": str(store), "OUTPUT": str(tmp_path / "n.gpkg")})
    finally:
        plugin.unload()


def test_panel_search_box_with_picked_examples(iface, store: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initGui()
    try:
        box = plugin.toggle_panel().search_box
        assert box.search() is None and "choose an embeddings store" in iface.bar.messages[-1][0]
        box.store.setFilePath(str(store))
        assert box.search() is None and "pick example chips" in iface.bar.messages[-1][0]
        box.k.setValue(4)
        box.add_example(*CLICK, "EPSG:31985")  # a click on the map (in the map CRS)
        assert box.picked.text() == "1 examples, 0 counter-examples"
        assert box.search() is not None
        wait_for(lambda: box.task is None)
        added = [
            layer for layer in QgsProject.instance().mapLayers().values() if layer.name().startswith("geobimors hits")
        ]
        assert len(added) == 1 and added[0].featureCount() == 4
        best = next(added[0].getFeatures())
        assert best["score"] > 0.999 and best.geometry().contains(QgsGeometry.fromPointXY(QgsPointXY(*CLICK)))
        assert any("added 4 hits" in text for text, level in iface.bar.messages if level == Qgis.Success)
        # Text in the box, and a CLI error shown as its one line.
        box.clear_examples()
        box.query.setText("forest; airport")
        box.search()
        wait_for(lambda: box.task is None)
        assert any("forest; airport" in layer.name() for layer in QgsProject.instance().mapLayers().values())
        box.store.setFilePath(str(SAMPLE / "labels.txt"))
        box.search()
        wait_for(lambda: box.task is None)
        text, level = iface.bar.messages[-1]
        assert level == Qgis.Critical and "not a readable Parquet file" in text
        assert "torch" not in sys.modules
    finally:
        QgsProject.instance().clear()
        plugin.unload()


def test_search_arguments_never_go_through_a_shell() -> None:
    request = SearchRequest(store="a b.parquet", output="o.gpkg", queries=["x; rm -rf /"], like=["p.geojson"], k=7)
    args = build_search_args(request)
    assert args[:3] == ["search", "a b.parquet", "x; rm -rf /"] and args[args.index("-k") + 1] == "7"
    assert args[args.index("--like") + 1] == "p.geojson" and "--overwrite" in args

"""Render what a QGIS user sees after mapping a scene: docs/qgis-screenshot.png.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 qgis_plugin/scripts/render_screenshot.py

Maps sample_data/L7_ETMs.tif with the bundled model through the plugin's runner
(the geobimors CLI of .venv, or GEOBIMORS_EXECUTABLE), loads the scene and the
labeled chips (styled from the GeoPackage) into a QGIS project and renders the
map canvas with a legend to PNG.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "qgis_plugin"))

from geobimors_qgis.runner import MapRequest, command_prefix, run_map  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsContrastEnhancement,
    QgsLayerTreeLayer,
    QgsLayerTreeModel,
    QgsLegendRenderer,
    QgsLegendSettings,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
    QgsRenderContext,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor, QImage, QPainter  # noqa: E402


def main() -> None:
    app = QgsApplication([], False)
    app.setPrefixPath("/usr", True)
    app.initQgis()
    executable = os.environ.get("GEOBIMORS_EXECUTABLE", str(ROOT / ".venv" / "bin" / "geobimors"))
    labels = (ROOT / "sample_data" / "labels.txt").read_text().splitlines()
    out = Path(tempfile.mkdtemp()) / "recife.gpkg"
    result = run_map(
        command_prefix(executable),
        MapRequest(
            scene=str(ROOT / "sample_data" / "L7_ETMs.tif"),
            output=str(out),
            bands="3,2,1",
            labels=[line for line in labels if line.strip() and not line.startswith("#")],
        ),
    )
    if result.error:
        raise SystemExit(result.error)
    raster = QgsRasterLayer(str(ROOT / "sample_data" / "L7_ETMs.tif"), "L7_ETMs")
    renderer = raster.renderer()
    renderer.setRedBand(3)
    renderer.setGreenBand(2)
    renderer.setBlueBand(1)
    for band, setter in (
        (3, renderer.setRedContrastEnhancement),
        (2, renderer.setGreenContrastEnhancement),
        (1, renderer.setBlueContrastEnhancement),
    ):
        stats = raster.dataProvider().bandStatistics(band)
        enhancement = QgsContrastEnhancement(raster.dataProvider().dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        enhancement.setMinimumValue(stats.mean - 2 * stats.stdDev)
        enhancement.setMaximumValue(stats.mean + 2 * stats.stdDev)
        setter(enhancement)
    chips = QgsVectorLayer(f"{out}|layername=chips", "geobimors chips", "ogr")
    assert chips.isValid() and chips.renderer().type() == "categorizedSymbol"
    project = QgsProject.instance()
    project.addMapLayers([raster, chips])
    settings = QgsMapSettings()
    settings.setLayers([chips, raster])
    settings.setDestinationCrs(raster.crs())
    settings.setExtent(raster.extent())
    settings.setOutputSize(QSize(900, 900))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    map_image = job.renderedImage()

    root = project.layerTreeRoot()
    legend_model_root = root.clone()
    for node in list(legend_model_root.children()):
        if isinstance(node, QgsLayerTreeLayer) and node.layer() is raster:
            legend_model_root.removeChildNode(node)
    # The renderer does not own the model: keep it alive, or Qt frees it under us.
    legend_model = QgsLayerTreeModel(legend_model_root)
    legend = QgsLegendRenderer(legend_model, QgsLegendSettings())
    size = legend.minimumSize()
    dpmm = 96 / 25.4
    legend_image = QImage(int(size.width() * dpmm) + 20, int(size.height() * dpmm) + 20, QImage.Format_ARGB32)
    legend_image.fill(QColor("white"))
    painter = QPainter(legend_image)
    painter.scale(dpmm, dpmm)
    context = QgsRenderContext.fromQPainter(painter)
    legend.drawLegend(context)
    painter.end()

    final = QImage(
        map_image.width() + legend_image.width(), max(map_image.height(), legend_image.height()), QImage.Format_ARGB32
    )
    final.fill(QColor("white"))
    painter = QPainter(final)
    painter.drawImage(0, 0, map_image)
    painter.drawImage(map_image.width(), 0, legend_image)
    painter.end()
    target = ROOT / "docs" / "qgis-screenshot.png"
    final.save(str(target))
    print(target)
    app.exitQgis()


if __name__ == "__main__":
    main()

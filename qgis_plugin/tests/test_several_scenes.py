"""Several scenes from QGIS: layers, files or a folder become several SCENE arguments of one CLI run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geobimors_qgis
import processing
import pytest
from geobimors_qgis.runner import (
    EmbedRequest,
    MapRequest,
    build_args,
    build_embed_args,
    command_prefix,
    describe_scenes,
    run_map,
)
from qgis.core import QgsProject, QgsRasterLayer, QgsSettings, QgsVectorLayer

from conftest import EXECUTABLE, wait_for


def fake_cli(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for the CLI that records its arguments (and succeeds without writing anything)."""
    record = tmp_path / "started-with.json"
    fake = tmp_path / "fake-geobimors"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    return fake, record


def scenes_of(args: list[str]) -> list[str]:
    """The positional SCENE arguments of a ``map``/``embed`` command line."""
    return args[1 : args.index("-o")]


def test_requests_with_several_scenes() -> None:
    request = MapRequest(scene=["a.tif", " b.tif ", "tiles/", "a.tif", ""], output="o.gpkg", labels=["x", "y"])
    args = build_args(request, "labels.txt")
    assert scenes_of(args) == ["a.tif", "b.tif", "tiles/"]  # in order, blanks and repeats dropped
    assert args[args.index("-o") + 1] == "o.gpkg" and args[args.index("--labels") + 1] == "labels.txt"
    assert scenes_of(build_args(MapRequest(scene="one.tif", output="o.gpkg"), None)) == ["one.tif"]
    embed = build_embed_args(EmbedRequest(scene=["a.tif", "b.tif"], output="stores"))
    assert scenes_of(embed) == ["a.tif", "b.tif"] and embed[embed.index("-o") + 1] == "stores"
    assert describe_scenes(["/x/a.tif", "/x/b.tif"]) == "2 scenes (a.tif, ...)"
    with pytest.raises(ValueError, match="choose a raster"):
        build_args(MapRequest(scene=["", " "], output="o.gpkg"), None)


def test_processing_passes_layers_and_a_folder(iface, small_scene: Path, tmp_path: Path) -> None:
    fake, record = fake_cli(tmp_path)
    QgsSettings().setValue("geobimors/executable", str(fake))
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initProcessing()
    try:
        second = tmp_path / "second.tif"
        second.write_bytes(small_scene.read_bytes())
        folder = tmp_path / "tiles"
        folder.mkdir()
        parameters = {
            "INPUT": str(small_scene),
            "MORE_INPUTS": [str(second)],
            "FOLDER": str(folder),
            "LABELS": "forest\nsea",
            "OUTPUT": str(tmp_path / "o.gpkg"),
        }
        processing.run("geobimors:mapscene", parameters)
        args = json.loads(record.read_text())
        assert args[0] == "map" and scenes_of(args) == [str(small_scene), str(second), str(folder)]
        # A folder alone is enough.
        processing.run("geobimors:mapscene", {**parameters, "INPUT": None, "MORE_INPUTS": None})
        assert scenes_of(json.loads(record.read_text())) == [str(folder)]
        raised = None
        try:
            processing.run("geobimors:mapscene", {**parameters, "INPUT": None, "MORE_INPUTS": None, "FOLDER": None})
        except Exception as exc:  # QgsProcessingException
            raised = str(exc)
        assert raised is not None and "no raster given" in raised
    finally:
        plugin.unload()


def test_panel_builds_several_scenes(iface, small_scene: Path, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initGui()
    try:
        panel = plugin.toggle_panel()
        first = QgsRasterLayer(str(small_scene), "first")
        second_path = tmp_path / "second.tif"
        second_path.write_bytes(small_scene.read_bytes())
        second = QgsRasterLayer(str(second_path), "second")
        QgsProject.instance().addMapLayers([first, second])
        panel.raster.setLayer(first)
        assert panel.more_layers.count() == 2  # the project's rasters are listed as they are added
        panel.more_layers.setItemCheckState(panel.more_layers.findData(second.id()), 2)  # Qt.Checked
        panel.output.setFilePath(str(tmp_path / "o.gpkg"))
        request = panel.request()
        assert request.scene == [str(small_scene), str(second_path)]
        assert scenes_of(build_args(request, "l.txt")) == [str(small_scene), str(second_path)]
        # Files (several) or a folder take the place of the layers.
        panel.raster_file.setFilePath(f'"{small_scene}" "{second_path}"')
        assert panel.request().scene == [str(small_scene), str(second_path)]
        panel.raster_file.setFilePath("")
        panel.folder.setFilePath(str(tmp_path))
        assert panel.request().scene == [str(tmp_path)]
        panel.folder.setFilePath("")
        panel.output.setFilePath("")
        assert panel.request().output.endswith("recife-small-and-1-more.geobimors.gpkg")
    finally:
        QgsProject.instance().clear()
        plugin.unload()


def _cli_takes_several_scenes() -> bool:
    try:
        done = subprocess.run([EXECUTABLE, "map", "--help"], capture_output=True, text=True, timeout=120)
    except OSError:
        return False
    usage = done.stdout.splitlines()[0] if done.stdout else ""
    return "SCENE..." in usage or "SCENE]..." in usage


def test_a_real_run_on_two_rasters(iface, small_scene: Path, tmp_path: Path) -> None:
    """Through the plugin's runner, the real CLI maps two rasters into one output (needs the multi-scene CLI)."""
    if not _cli_takes_several_scenes():
        pytest.skip("this geobimors map takes one SCENE; the multi-scene CLI (issue 17) is not merged yet")
    from osgeo import gdal

    # Two rasters side by side (the overlap rule would keep one scene's chips where they overlap).
    source = gdal.Open(str(small_scene))
    width, height = source.RasterXSize, source.RasterYSize
    first, second = tmp_path / "west.tif", tmp_path / "east.tif"
    assert gdal.Translate(str(first), str(small_scene), srcWin=[0, 0, width // 2, height]) is not None
    assert gdal.Translate(str(second), str(small_scene), srcWin=[width // 2, 0, width - width // 2, height]) is not None
    out = tmp_path / "two.gpkg"
    request = MapRequest(
        scene=[str(first), str(second)], output=str(out), labels=["forest", "sea or lake"], model="mini",
        bands="3,2,1",
    )  # fmt: skip
    progress: list[float] = []
    result = run_map(command_prefix(EXECUTABLE), request, progress.append)
    assert (result.returncode, result.error) == (0, None), result.lines[-5:]
    assert progress and progress[-1] == 100
    layer = QgsVectorLayer(f"{out}|layername=chips", "chips", "ogr")
    assert layer.isValid()
    scenes = {feature["scene"] for feature in layer.getFeatures()}
    assert scenes == {"west", "east"}
    wait_for(lambda: True)

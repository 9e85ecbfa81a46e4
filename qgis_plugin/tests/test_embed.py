"""The "Embed scene" Processing algorithm: runs `geobimors embed`, never imports torch."""

from __future__ import annotations

import sys
from pathlib import Path

import geobimors_qgis
import processing
from geobimors_qgis.runner import EmbedRequest, build_embed_args
from qgis.core import QgsApplication

from conftest import SAMPLE


def test_embed_scene_writes_a_geoparquet_store(iface, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initProcessing()
    try:
        algorithm = QgsApplication.processingRegistry().algorithmById("geobimors:embedscene")
        assert algorithm is not None and algorithm.displayName() == "Embed scene (geobimors)"
        out = tmp_path / "recife.parquet"
        result = processing.run(
            "geobimors:embedscene",
            {"INPUT": str(SAMPLE / "L7_ETMs.tif"), "MODEL": "mini", "BANDS": "3,2,1", "OUTPUT": str(out)},
        )
        assert result["OUTPUT"] == str(out)
        data = out.read_bytes()
        assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"  # a complete Parquet file (footer written)
        assert b'"primary_column": "geometry"' in data and b'"model": "mini"' in data  # geo + geobimors metadata
        assert not [p for p in tmp_path.iterdir() if p != out]  # no lock, temporary file or run store left
        assert "torch" not in sys.modules
    finally:
        plugin.unload()


def test_embed_scene_reports_cli_errors(iface, tmp_path: Path) -> None:
    plugin = geobimors_qgis.classFactory(iface)
    plugin.initProcessing()
    try:
        raised = None
        try:
            processing.run(
                "geobimors:embedscene",
                {"INPUT": str(SAMPLE / "L7_ETMs.tif"), "MODEL": "mini", "OUTPUT": str(tmp_path / "o.parquet")},
            )
        except Exception as exc:  # QgsProcessingException
            raised = str(exc)
        assert raised is not None and "pass --bands" in raised  # the CLI's one-line message
        assert not (tmp_path / "o.parquet").exists()
    finally:
        plugin.unload()


def test_embed_arguments_never_go_through_a_shell() -> None:
    request = EmbedRequest(scene="a b; rm -rf x.tif", output="o.parquet", model="mini", dtype="float32")
    args = build_embed_args(request)
    assert args[:2] == ["embed", "a b; rm -rf x.tif"]
    assert args[args.index("--dtype") + 1] == "float32" and "jsonl" in args and "--captions" not in args

"""Library calls are quiet unless asked; the CLI keeps its bar."""

from __future__ import annotations

from pathlib import Path

import pytest

import geobimors


def test_map_scene_is_quiet_by_default(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path
) -> None:
    frame = geobimors.map_scene(rgb_scene, labels_file, model=tiny_model, chip_size=32, device="cpu")
    assert len(frame) > 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_map_scene_shows_a_bar_when_asked(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path
) -> None:
    geobimors.map_scene(rgb_scene, labels_file, model=tiny_model, chip_size=32, device="cpu", progress=True)
    assert "chip/s" in capsys.readouterr().err


def test_map_to_gpkg_output_reads_back_by_layer(
    tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    import warnings

    import geopandas as gpd

    out = tmp_path / "out.gpkg"
    geobimors.map_to_gpkg(rgb_scene, labels_file, out, model=tiny_model, chip_size=32, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as the README shows it: no "more than one layer" warning
        chips = gpd.read_file(out, layer="chips")
    assert len(chips) == 12 and "label" in chips

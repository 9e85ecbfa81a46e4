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


def test_embed_is_quiet_by_default_and_shows_a_bar_when_asked(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, tmp_path: Path
) -> None:
    summary = geobimors.embed(rgb_scene, tmp_path / "a.parquet", model=tiny_model, chip_size="32", device="cpu")
    assert summary.n_embedded == 12
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    geobimors.embed(rgb_scene, tmp_path / "b.parquet", model=tiny_model, chip_size="32", device="cpu", progress=True)
    assert "chip/s" in capsys.readouterr().err


def test_train_is_quiet_by_default_and_shows_a_bar_when_asked(
    capsys: pytest.CaptureFixture[str], small_eurosat: Path, tiny_model: str, tmp_path: Path
) -> None:
    options = {"model": tiny_model, "head": "probe", "shots": 2, "val_shots": 2, "device": "cpu"}
    head, _ = geobimors.train(small_eurosat, tmp_path / "a.safetensors", **options)
    assert head.kind == "probe"
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    geobimors.train(small_eurosat, tmp_path / "b.safetensors", progress=True, **options)
    assert "embedding images" in capsys.readouterr().err

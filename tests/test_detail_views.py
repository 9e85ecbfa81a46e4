"""Detail views on ``map`` (``--views 5|6``): chips read at twice the pixels, their sub-views blended in."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

import geobimors
from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.labels import read_labels
from geobimors.models.clip import load_model
from geobimors.raster.read import ChipReader
from geobimors.run.plan import MapSettings, plan_map

from cli_helpers import assert_one_line_error, run_cli
from rasters import make_geotiff, random_rgb


def test_map_with_detail_views_classifies_the_blend_of_a_finer_chip_and_its_sub_views(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    scene = make_geotiff(tmp_path / "scene.tif", random_rgb(64, 96, seed=5))
    labels = tuple(read_labels(labels_file))
    plain = plan_map(MapSettings(str(scene), labels, tiny_model, chip_size="32"))
    views = plan_map(MapSettings(str(scene), labels, tiny_model, chip_size="32", views=6))
    # The same footprints, read at twice the pixels; another run to resume into.
    assert (views.grid.chip_width, views.grid.out_width) == (plain.grid.chip_width, 2 * plain.grid.out_width)
    assert len(views.grid) == len(plain.grid) == 6 and views.fingerprint() != plain.fingerprint()
    batch = ChipReader(views.read).read_batch(list(views.grid.chips()))
    clip = load_model(tiny_model, "cpu").with_views(6)
    logits = ZeroShotHead(clip, list(labels)).logits_from_embeddings(clip.embed_chips(batch.pixels))
    expected = [labels[i].name for i in logits.argmax(1).tolist()]

    out = tmp_path / "views.gpkg"
    result = run_cli(capsys, "map", scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "32", "--views", "6",
                     "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.err
    assert "the chip and 5 detail views of it, --views" in result.err
    chips = gpd.read_file(out, layer="chips").sort_values(["row", "col"])
    assert chips["label"].tolist() == expected
    np.testing.assert_allclose(chips["score"], logits.softmax(1).max(1).values.numpy(), atol=1e-5)
    # The Python API takes the same option.
    frame = geobimors.map_scene(scene, labels_file, model=tiny_model, chip_size=32, views=6)
    assert frame.sort_values(["row", "col"])["label"].tolist() == expected


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--views", "4"], "--views must be 1 (the full image), 5"),
        (["--view-blend", "0.3"], "pass --views 5 or 6 with it"),
        (["--views", "6", "--captions", "mini"], "--captions writes captions from one view"),
        (["--views", "6", "--embeddings", "s.parquet"], "--embeddings stores one view's features"),
    ],
)
def test_map_refuses_detail_views_where_they_cannot_apply(
    capsys: pytest.CaptureFixture[str],
    tiny_model: str,
    labels_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    scene = make_geotiff(tmp_path / "scene.tif", random_rgb(64, 64))
    common = ["-l", labels_file, "-m", tiny_model, "--chip-size", "32", "-o", tmp_path / "o.gpkg"]
    result = run_cli(capsys, "map", scene, *common, *options)
    assert_one_line_error(result, 2, fragment)
    assert not (tmp_path / "o.gpkg").exists() and not (tmp_path / "s.parquet").exists()

"""The chip resolution picked per scene from the range of ground resolutions a model was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import Affine

from geobimors.embeddings.embed import resolved_gsd
from geobimors.errors import InputError
from geobimors.models import mini
from geobimors.models.bundled import declared_default_gsd_floor, declared_gsd_range, declared_native_upsampling
from geobimors.raster.scene import open_scene
from geobimors.run.plan import MapSettings, default_gsd, plan_reading

from rasters import make_geotiff


def scene_at(tmp_path: Path, metres: float, size: int = 300) -> Path:
    """A UTM scene of ``size`` x ``size`` px at ``metres`` per pixel."""
    data = np.random.default_rng(0).integers(0, 255, (3, size, size), dtype=np.uint8)
    return make_geotiff(tmp_path / f"s{metres:g}.tif", data, Affine(metres, 0, 500_000.0, 0, -metres, 5_000_000.0))


def test_mini_declares_its_trained_range() -> None:
    low, high = declared_gsd_range("mini") or (0.0, 0.0)
    assert 0 < low < 1 and 10 <= high <= 100  # aerial (UC Merced) to Landsat-like
    # the registry and the model's own config (read by loaders that do not import geobimors) agree
    config = json.loads(mini.CONFIG_PATH.read_text())["geobimors"]
    assert tuple(config["gsd_range"]) == (low, high) and low <= config["native_gsd"] <= high
    assert config["native_upsampling"] == declared_native_upsampling("mini")
    assert config["default_gsd_floor"] == declared_default_gsd_floor("mini") and low <= config["default_gsd_floor"]


@pytest.mark.parametrize(
    ("metres", "expected"),
    [
        (0.6, 1.2),
        (1.2, 1.2),
        (2.0, 2.0),
        (5.0, 5.0),
        (10.0, 10.0),
        (28.5, 10.0),
        (0.1, 1.2),
        (45.0, 30.0),
        (60.0, 30.0),
    ],
)
def test_scene_resolution_moved_into_the_range(tmp_path: Path, metres: float, expected: float) -> None:
    scene = open_scene(str(scene_at(tmp_path, metres)))
    assert default_gsd(scene, "mini") == pytest.approx(expected)


def test_very_coarse_scenes_are_upsampled_at_most_four_times(tmp_path: Path) -> None:
    scene = open_scene(str(scene_at(tmp_path, 300.0)))
    with pytest.warns(UserWarning, match="coarser than model mini was trained on"):
        assert default_gsd(scene, "mini") == pytest.approx(75.0)


def test_plan_reading_reads_a_fine_aerial_photo_at_the_default_floor(tmp_path: Path) -> None:
    """A 0.6 m photo is read at mini's 1.2 m floor: 64 px chips of 128 scene px (77 m, a UC Merced image)."""
    assert declared_default_gsd_floor("mini") == 1.2
    path = scene_at(tmp_path, 0.6, size=256)
    scene, grid, _, _ = plan_reading(MapSettings(scene=str(path)), "mini")
    assert (grid.chip_width, grid.out_width, grid.n_rows, grid.n_cols) == (128, 64, 2, 2)
    assert resolved_gsd(MapSettings(scene=str(path)), scene, "mini") == pytest.approx(1.2)
    # --gsd still reads it at its own resolution.
    scene, grid, _, _ = plan_reading(MapSettings(scene=str(path), gsd=0.6), "mini")
    assert (grid.chip_width, grid.out_width, grid.n_rows, grid.n_cols) == (64, 64, 4, 4)


def test_gsd_option_still_wins(tmp_path: Path) -> None:
    path = scene_at(tmp_path, 0.6, size=256)
    # --gsd 10: one 640 m chip does not fit in a 154 m scene, as before the range existed
    with pytest.raises(InputError, match="larger than the scene"):
        plan_reading(MapSettings(scene=str(path), gsd=10.0), "mini")
    settings = MapSettings(scene=str(path), keep_scene_gsd=True, chip_size="32")
    scene, grid, _, _ = plan_reading(settings, "mini")
    assert (grid.chip_width, grid.out_width) == (32, 32) and resolved_gsd(settings, scene, "mini") is None
    # coarse scene with --gsd 10: chips are resampled to 10 m (no range applied)
    coarse = scene_at(tmp_path, 20.0, size=200)
    _, grid, _, _ = plan_reading(MapSettings(scene=str(coarse), gsd=10.0), "mini")
    assert (grid.chip_width, grid.out_width) == (32, 64)


def test_real_aerial_photo_is_mapped_not_refused() -> None:
    cogeo = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scenes" / "cogeo.tif"
    if not cogeo.is_file():
        pytest.skip("../shared/data/scenes/cogeo.tif is not available")
    scene, grid, _, _ = plan_reading(MapSettings(scene=str(cogeo)), "mini")
    assert (grid.n_rows, grid.n_cols, grid.out_width) == (8, 8, 64) and abs(grid.chip_width - 128) <= 1  # 0.597 m
    assert resolved_gsd(MapSettings(scene=str(cogeo)), scene, "mini") == pytest.approx(1.2, rel=0.01)

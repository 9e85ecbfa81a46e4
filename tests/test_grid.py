"""The chip grid: counts, coverage, footprints, ground units, resampling sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.windows import Window

from geobimors.errors import InputError
from geobimors.raster.grid import GridSpec, build_grid
from geobimors.raster.scene import SceneInfo
from geobimors.vector.gpkg import chip_polygons


def scene(width: int, height: int, transform: Affine | None = None, crs: CRS | None = None) -> SceneInfo:
    return SceneInfo(
        path="mem.tif",
        width=width,
        height=height,
        count=3,
        dtype="uint8",
        crs=crs if crs is not None else CRS.from_epsg(32632),
        transform=transform or Affine(10, 0, 500_000, 0, -10, 5_000_000),
        nodata=None,
        colorinterp=("red", "green", "blue"),
        overview_factors=(),
    )


def coverage(grid) -> np.ndarray:  # type: ignore[no-untyped-def]
    counts = np.zeros((grid.height, grid.width), dtype=np.int32)
    for chip in grid.chips():
        w = grid.footprint_window(chip)
        counts[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    return counts


def test_counts_and_padding() -> None:
    grid = build_grid(scene(130, 100), GridSpec.parse(32))
    assert (grid.n_rows, grid.n_cols) == (4, 5)
    last = grid.chip(3, 4)
    assert (last.row_off, last.col_off, last.height, last.width) == (96, 128, 32, 32)
    assert grid.footprint_window(last) == Window(128, 96, 2, 4)


def test_zero_overlap_footprints_tile_the_scene_exactly() -> None:
    grid = build_grid(scene(130, 100), GridSpec.parse(32))
    assert (coverage(grid) == 1).all()
    chips = list(grid.chips())
    polygons = chip_polygons(grid.transform, grid.footprint_windows(chips))
    scene_poly = shapely.box(500_000, 5_000_000 - 1000, 500_000 + 1300, 5_000_000)
    union = shapely.union_all(polygons)
    assert union.symmetric_difference(scene_poly).area == pytest.approx(0, abs=1e-6)
    assert sum(p.area for p in polygons) == pytest.approx(scene_poly.area)


def test_footprint_equals_window_transform() -> None:
    grid = build_grid(scene(130, 100), GridSpec.parse(32, overlap=8))
    for chip in grid.chips():
        window = grid.footprint_window(chip)
        poly = chip_polygons(grid.transform, grid.footprint_windows([chip]))[0]
        t = grid.window_transform(window)
        expected = shapely.Polygon(
            [t @ (0, 0), t @ (window.width, 0), t @ (window.width, window.height), t @ (0, window.height)]
        )
        assert poly.equals_exact(expected, 1e-6)


def test_ground_units_and_gsd() -> None:
    info = scene(1000, 1000)  # 10 m pixels
    grid = build_grid(info, GridSpec.parse("640m"))
    assert (grid.chip_width, grid.out_width) == (64, 64)
    grid = build_grid(info, GridSpec.parse(64, gsd=20))  # 64 output px at 20 m = 1280 m = 128 scene px
    assert (grid.chip_width, grid.chip_height, grid.out_width) == (128, 128, 64)
    grid = build_grid(info, GridSpec.parse("1.28km", overlap="320m", gsd=20))
    assert (grid.chip_width, grid.stride_x, grid.out_width) == (128, 96, 64)
    grid = build_grid(info, GridSpec.parse(64, overlap=16, gsd=20))  # overlap in output px
    assert grid.stride_x == 128 - 32


def test_ground_units_in_feet_crs() -> None:
    # EPSG:2263 (NY Long Island, US survey feet): 10 ft pixels = 3.048 m.
    info = scene(1000, 1000, Affine(10, 0, 1e6, 0, -10, 2e5), CRS.from_epsg(2263))
    grid = build_grid(info, GridSpec.parse("304.8m"))
    assert grid.chip_width == 100


def test_geographic_crs_converts_at_scene_latitude() -> None:
    # 0.0001 degree pixels at 60 N: about 5.57 m east-west, 11.13 m north-south.
    info = scene(2000, 2000, Affine(0.0001, 0, 10.0, 0, -0.0001, 60.1), CRS.from_epsg(4326))
    with pytest.warns(UserWarning, match="geographic CRS"):
        grid = build_grid(info, GridSpec.parse("556m"))
    assert grid.chip_height == 50
    assert grid.chip_width == pytest.approx(100, abs=1)


def test_rotated_transform_footprints() -> None:
    t = Affine.translation(1000, 2000) @ Affine.rotation(30) @ Affine.scale(2, -2)
    grid = build_grid(scene(50, 40, t), GridSpec.parse(16))
    polygons = chip_polygons(t, grid.footprint_windows(list(grid.chips())))
    assert sum(p.area for p in polygons) == pytest.approx(50 * 40 * 4)
    assert shapely.union_all(polygons).area == pytest.approx(50 * 40 * 4)
    assert build_grid(scene(50, 40, t), GridSpec.parse("32m")).chip_width == 16


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (GridSpec.parse(200), "larger than scene"),
        (GridSpec.parse(32, overlap=32), "must be smaller than the chip"),
    ],
)
def test_bad_grids(spec: GridSpec, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_grid(scene(130, 100), spec)


def test_ground_units_need_a_crs() -> None:
    info = scene(100, 100)
    info = SceneInfo(**{**info.__dict__, "crs": None})
    with pytest.raises(InputError, match="no CRS"):
        build_grid(info, GridSpec.parse("100m"))


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 160),
    height=st.integers(1, 160),
    chip=st.integers(1, 48),
    overlap_fraction=st.floats(0, 0.9),
    a=st.floats(0.5, 50),
    rotation=st.sampled_from([0.0, 15.0, -40.0, 90.0]),
    flip_y=st.booleans(),
)
def test_grid_properties(
    width: int, height: int, chip: int, overlap_fraction: float, a: float, rotation: float, flip_y: bool
) -> None:
    overlap = min(chip - 1, int(chip * overlap_fraction))
    transform = Affine.translation(123.0, -77.0) @ Affine.rotation(rotation) @ Affine.scale(a, a if flip_y else -a)
    info = scene(width, height, transform)
    spec = GridSpec.parse(chip, overlap=overlap)
    if chip > width or chip > height:
        with pytest.raises(InputError):
            build_grid(info, spec)
        return
    grid = build_grid(info, spec)
    chips = list(grid.chips())
    assert len(chips) == len(grid) == grid.n_rows * grid.n_cols
    # No chip twice, every chip starts inside the scene.
    assert len({(c.row_off, c.col_off) for c in chips}) == len(chips)
    assert all(0 <= c.col_off < width and 0 <= c.row_off < height for c in chips)
    # Chips cover the scene; with zero overlap exactly once.
    counts = coverage(grid)
    assert counts.min() >= 1
    if overlap == 0:
        assert counts.max() == 1
    # Footprints are the transforms of their windows.
    polygons = chip_polygons(transform, grid.footprint_windows(chips))
    for c, poly in zip(chips[:5], polygons[:5]):
        w = grid.footprint_window(c)
        corners = [transform @ (w.col_off, w.row_off), transform @ (w.col_off + w.width, w.row_off + w.height)]
        assert poly.area == pytest.approx(w.width * w.height * a * a, rel=1e-9)
        coords = np.asarray(poly.exterior.coords)
        for corner in corners:
            assert np.min(np.hypot(coords[:, 0] - corner[0], coords[:, 1] - corner[1])) < 1e-6 * max(1.0, a * 200)


@settings(max_examples=100, deadline=None)
@given(res=st.floats(0.3, 100), size_m=st.floats(10, 5000), gsd=st.one_of(st.none(), st.floats(0.3, 50)))
def test_ground_unit_conversion(res: float, size_m: float, gsd: float | None) -> None:
    info = scene(100_000, 100_000, Affine(res, 0, 0, 0, -res, 0))
    expected_src = max(1, round(size_m / res))
    spec = GridSpec.parse(f"{size_m}m", gsd=gsd)
    if expected_src > 100_000:
        return
    grid = build_grid(info, spec)
    assert grid.chip_width == expected_src
    assert grid.out_width == (max(1, round(size_m / gsd)) if gsd else expected_src)
    assert math.isclose(grid.ground_size[0], expected_src * res, rel_tol=1e-9)


def test_a_resampled_chip_larger_than_the_scene_says_what_to_do() -> None:
    """64 px chips at the model's 10 m on a 0.6 m aerial scene of 1024 px (sample_data/cogeo.tif)."""
    aerial = scene(1024, 1024, Affine(0.6, 0, 500_000, 0, -0.6, 5_000_000))
    with pytest.raises(InputError) as error:
        build_grid(aerial, GridSpec.parse(64, gsd=10.0))
    message = str(error.value)
    assert "64 px at 10 m/px covers 640 m" in message and "1067 x 1067 px" in message
    assert "0.6 m/px scene mem.tif (1024 x 1024 px)" in message
    assert "--gsd scene" in message and "--chip-size" in message and "aerial" in message
    assert build_grid(aerial, GridSpec.parse(64, gsd=None)).chip_width == 64  # what --gsd scene does

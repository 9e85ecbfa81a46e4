"""Windowed chip reads: bands, nodata, padding, resampling and scene-level scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from geobimors.errors import InputError
from geobimors.raster.grid import GridSpec, build_grid
from geobimors.raster.read import ChipReader, ReadSpec
from geobimors.raster.scaling import ScaleRange, scene_scale_range
from geobimors.raster.scene import open_scene, select_bands

from rasters import make_geotiff, random_rgb


def reader(path: Path, chip: int = 16, bands=None, scale_manual=None, nodata=None, gsd=None, min_valid=0.5):  # type: ignore[no-untyped-def]
    info = open_scene(path)
    selection = select_bands(info, bands)
    grid = build_grid(info, GridSpec.parse(chip, gsd=gsd))
    scale = scene_scale_range(info, selection.indexes, manual=scale_manual, nodata=nodata)
    return ChipReader(ReadSpec(info.path, grid, selection.indexes, scale, nodata, min_valid)), grid


def test_band_selection_picks_the_right_bands(tmp_path: Path) -> None:
    data = np.stack([np.full((32, 32), v, dtype=np.uint8) for v in (10, 20, 30, 40, 50, 60)])
    path = make_geotiff(tmp_path / "six.tif", data)
    chip_reader, grid = reader(path, bands=(3, 2, 1))
    pixels, fraction = chip_reader.read(grid.chip(0, 0))
    assert pixels.shape == (16, 16, 3)
    assert pixels[0, 0].tolist() == [30, 20, 10]
    chip_reader, grid = reader(path, bands=(6, 4, 5))
    assert chip_reader.read(grid.chip(1, 1))[0][5, 5].tolist() == [60, 40, 50]
    assert fraction == 1.0


def test_default_bands_follow_colour_interpretation(tmp_path: Path) -> None:
    data = np.stack([np.full((32, 32), v, dtype=np.uint8) for v in (1, 2, 3, 4)])
    interp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    path = make_geotiff(tmp_path / "bgrn.tif", data, colorinterp=interp)
    assert select_bands(open_scene(path)).indexes == (3, 2, 1)
    six = make_geotiff(tmp_path / "six.tif", np.zeros((6, 32, 32), np.uint8))
    with pytest.raises(InputError, match="pass --bands"):
        select_bands(open_scene(six))
    with pytest.raises(InputError, match="out of range"):
        select_bands(open_scene(six), (7, 2, 1))
    with pytest.raises(InputError, match="3 band indexes"):
        select_bands(open_scene(six), (1, 2))


def test_single_band_becomes_grey_with_a_warning(tmp_path: Path) -> None:
    path = make_geotiff(tmp_path / "grey.tif", np.full((1, 32, 32), 77, dtype=np.uint8))
    with pytest.warns(UserWarning, match="single band"):
        chip_reader, grid = reader(path)
    assert chip_reader.read(grid.chip(0, 0))[0][3, 3].tolist() == [77, 77, 77]


def test_nodata_chips_are_skipped_and_padding_counts_as_invalid(tmp_path: Path) -> None:
    data = random_rgb(40, 40, seed=1)
    data[:, :20, :20] = 0  # top-left chip all nodata
    data[:, 20:, :20][:, :5] = 0  # a quarter of the chip below is nodata
    path = make_geotiff(tmp_path / "nodata.tif", data, nodata=0)
    chip_reader, grid = reader(path, chip=20)
    chips = list(grid.chips())
    batch = chip_reader.read_batch(chips)
    assert batch.valid_fraction.tolist() == pytest.approx([0.0, 1.0, 0.75, 1.0], abs=0.01)
    assert batch.keep.tolist() == [False, True, True, True]
    # A 30 x 30 scene with 20 px chips: edge chips are padded, padding is invalid.
    small = make_geotiff(tmp_path / "small.tif", random_rgb(30, 30, seed=2))
    chip_reader, grid = reader(small, chip=20)
    batch = chip_reader.read_batch(list(grid.chips()))
    assert batch.valid_fraction.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.25])
    assert batch.keep.tolist() == [True, True, True, False]
    assert (batch.pixels[3][10:, :] == 0).all() and (batch.pixels[3][:, 10:] == 0).all()


def test_nodata_override_and_nan(tmp_path: Path) -> None:
    data = np.full((3, 20, 20), 500.0, dtype=np.float32)
    data[:, :10, :] = np.nan
    path = make_geotiff(tmp_path / "float.tif", data)
    chip_reader, grid = reader(path, chip=20)
    assert chip_reader.read(grid.chip(0, 0))[1] == pytest.approx(0.5)
    path = make_geotiff(tmp_path / "fill.tif", np.where(np.isnan(data), 7, data).astype(np.uint16))
    chip_reader, grid = reader(path, chip=20, nodata=7)
    assert chip_reader.read(grid.chip(0, 0))[1] == pytest.approx(0.5)


def test_16bit_scaling_is_scene_level(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, (3, 64, 64)).astype(np.uint16)
    pattern = rng.integers(1000, 3000, (3, 16, 16)).astype(np.uint16)
    data[:, 0:16, 0:16] = pattern
    data[:, 48:64, 32:48] = pattern
    data[:, 0:16, 16:32] = 10  # a dark chip that per-chip min-max would stretch
    path = make_geotiff(tmp_path / "u16.tif", data)
    chip_reader, grid = reader(path)
    a = chip_reader.read(grid.chip(0, 0))[0]
    b = chip_reader.read(grid.chip(3, 2))[0]
    np.testing.assert_array_equal(a, b)
    assert a.min() < a.max()
    dark = chip_reader.read(grid.chip(0, 1))[0]
    assert dark.max() < 10  # stays dark: no per-chip stretch
    assert chip_reader.spec.scale is not None
    lo, hi = chip_reader.spec.scale.low[0], chip_reader.spec.scale.high[0]
    assert 0 < lo < 300 and 3700 < hi < 4000


def test_manual_scale_range(tmp_path: Path) -> None:
    path = make_geotiff(tmp_path / "u16.tif", np.full((3, 16, 16), 1500, dtype=np.uint16))
    chip_reader, grid = reader(path, scale_manual="1000,2000")
    assert chip_reader.read(grid.chip(0, 0))[0][0, 0].tolist() == [128, 128, 128]
    chip_reader, _ = reader(path, scale_manual="0,3000,1000,2000,1400,1800")
    assert chip_reader.read(grid.chip(0, 0))[0][0, 0].tolist() == [128, 128, 64]
    with pytest.raises(InputError, match="MAX must be greater"):
        reader(path, scale_manual="5,1")


def test_scale_range_apply_clips_and_handles_nan() -> None:
    scale = ScaleRange((0.0, 0.0, 0.0), (10.0, 10.0, 10.0), "test")
    data = np.array([[[-5.0, 5.0, 20.0, np.nan]]] * 3, dtype=np.float32)
    assert scale.apply(data)[0, 0].tolist() == [0, 128, 255, 0]


def test_statistics_use_overviews(tmp_path: Path) -> None:
    # Overviews made from 1000s, then the full-resolution pixels changed to 3000s: statistics
    # read from the overviews see only 1000s. (2048 px: statistics are read at 1,024 px.)
    path = make_geotiff(
        tmp_path / "cog.tif",
        np.full((1, 2048, 2048), 1000, dtype=np.uint16),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4])
        ds.write(np.full((1, 2048, 2048), 3000, dtype=np.uint16))
    info = open_scene(path)
    assert info.has_overviews
    scale = scene_scale_range(info, (1, 1, 1))
    assert scale is not None and "overviews" in scale.source
    assert scale.low == (1000.0,) * 3 and scale.high == (1001.0,) * 3


def test_gsd_resampling_reads_the_ground_area(tmp_path: Path) -> None:
    data = np.zeros((3, 64, 64), dtype=np.uint8)
    data[:, :, 32:] = 200  # right half bright
    path = make_geotiff(tmp_path / "res.tif", data)  # 10 m pixels
    chip_reader, grid = reader(path, chip=16, gsd=40)  # 16 px at 40 m = 64 scene px
    assert (grid.chip_width, grid.out_width) == (64, 16)
    pixels = chip_reader.read(grid.chip(0, 0))[0]
    assert pixels.shape == (16, 16, 3)
    assert pixels[:, :8].max() == 0 and pixels[:, 8:].min() == 200


def test_real_landsat_16bit_scene(shared_scenes: Path) -> None:
    with pytest.warns(UserWarning, match="single band"):
        chip_reader, grid = reader(shared_scenes / "LC08_B2_60m.tif", chip=64, nodata=0)
    batch = chip_reader.read_batch(list(grid.chips(0, 20)))
    assert batch.pixels.dtype == np.uint8
    assert batch.keep.any()
    assert batch.pixels[batch.keep].std() > 5


@pytest.mark.parametrize(
    ("chip", "overlap", "nodata", "dtype"),
    [(16, 0, None, np.uint8), (16, 4, 0, np.uint8), (12, 0, 7, np.uint16), (16, 8, None, np.float32)],
)
def test_strip_reads_match_chip_by_chip_reads(
    tmp_path: Path, chip: int, overlap: int, nodata: float | None, dtype: type
) -> None:
    """A batch read as strips (one window per grid row) gives what reading each chip alone gives.

    The scene's edges pad the last row and column, nodata and NaN holes cross chip borders, and
    16-bit data goes through scene-level scaling: every chip's pixels and valid fraction must match.
    """
    data = (np.random.default_rng(3).random((3, 45, 53)) * 1000).astype(dtype)
    data[:, 5:20, 10:30] = 7 if nodata == 7 else 0
    if dtype == np.float32:
        data[:, 30:40, 2:25] = np.nan
    path = make_geotiff(tmp_path / "scene.tif", data, nodata=nodata)
    info = open_scene(path)
    grid = build_grid(info, GridSpec.parse(chip, overlap=overlap))
    selection = select_bands(info, (1, 2, 3))
    scale = scene_scale_range(info, selection.indexes, nodata=nodata)
    chip_reader = ChipReader(ReadSpec(info.path, grid, selection.indexes, scale, nodata))
    chips = list(grid.chips())
    strips = chip_reader._strips(chips)
    assert len(strips) == grid.n_rows  # the whole grid in one batch: a strip per grid row
    batch = chip_reader.read_batch(chips)
    one_by_one = [chip_reader.read(c) for c in chips]
    assert np.array_equal(batch.pixels, np.stack([pixels for pixels, _ in one_by_one]))
    assert batch.valid_fraction.tolist() == pytest.approx([fraction for _, fraction in one_by_one])
    assert 0 < batch.keep.sum() < len(chips)  # the holes and the padded corner make some chips skip


def test_resampled_chips_and_gaps_are_read_one_window_each(tmp_path: Path) -> None:
    path = make_geotiff(tmp_path / "scene.tif", random_rgb(64, 64))
    info = open_scene(path)
    resampled = build_grid(info, GridSpec.parse(16, gsd=20))  # 10 m scene read at 20 m
    chip_reader = ChipReader(ReadSpec(info.path, resampled, (1, 2, 3), None))
    assert chip_reader._strips(list(resampled.chips())) == [[i] for i in range(len(resampled))]
    grid = build_grid(info, GridSpec.parse(16))
    chips = list(grid.chips())
    chip_reader = ChipReader(ReadSpec(info.path, grid, (1, 2, 3), None))
    # A batch with a gap (a resumed run skips finished chips): the gap splits the strip.
    assert chip_reader._strips([chips[0], chips[1], chips[3], chips[4]]) == [[0, 1], [2], [3]]

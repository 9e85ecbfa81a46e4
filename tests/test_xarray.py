"""The xarray API: chip grid coordinates, CRS, laziness, parity with the CLI, dask vs in-memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rioxarray
import xarray as xr

import geobimors
import geobimors.xarray as gx
from geobimors.errors import InputError

from cli_helpers import run_cli
from rasters import make_geotiff, random_rgb

LABELS = ["forest", "water: a lake or the sea", "fields"]


def test_coordinates_crs_and_variables(tiny_model: str, rgb_scene: Path) -> None:
    data = rioxarray.open_rasterio(rgb_scene)
    ds = data.geobimors.classify(labels=LABELS, model=tiny_model, chip_size=32, overlap=8, progress=False)
    assert ds.rio.crs == data.rio.crs and "spatial_ref" in ds.coords
    assert list(ds.coords["labels"].values) == ["forest", "water", "fields"]
    assert ds["probability"].dims == ("labels", "y", "x")
    assert ds.sizes == {"labels": 3, "y": 4, "x": 5}
    t = data.rio.transform()
    # Chip (row, col) covers scene pixels [row*24, row*24+32) x [col*24, col*24+32): centre at +16.
    for row in range(4):
        for col in range(5):
            x, y = t @ (col * 24 + 16, row * 24 + 16)
            assert ds.x.values[col] == pytest.approx(x) and ds.y.values[row] == pytest.approx(y)
    np.testing.assert_allclose(ds["probability"].sum("labels"), 1.0, rtol=1e-5)
    assert (ds["score"] == ds["probability"].max("labels")).all()
    best = ds["probability"].argmax("labels").values
    assert (ds["label"].values == np.asarray(ds.coords["labels"].values)[best]).all()
    assert ds.probability.sel(labels="forest").shape == (4, 5)


def test_lazy_until_compute(tiny_model: str, rgb_scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = gx.get_classifier

    def counting(spec):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(spec)

    monkeypatch.setattr(gx, "get_classifier", counting)
    lazy = rioxarray.open_rasterio(rgb_scene, chunks={"y": 32})
    ds = geobimors.classify(lazy, LABELS, model=tiny_model, chip_size=32)
    assert calls == [] and ds["probability"].chunks is not None
    computed = ds.compute()
    assert len(calls) == 3 and computed["label"].notnull().all()  # one task per chip row


def test_dask_and_in_memory_inputs_agree(tiny_model: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    scene = make_geotiff(tmp_path / "u16.tif", rng.integers(0, 4000, (3, 80, 96)).astype(np.uint16), nodata=0)
    eager = rioxarray.open_rasterio(scene).geobimors.classify(LABELS, model=tiny_model, chip_size=16, progress=False)
    lazy = rioxarray.open_rasterio(scene, chunks={"x": 40, "y": 24}).geobimors.classify(
        LABELS, model=tiny_model, chip_size=16
    )
    xr.testing.assert_allclose(eager.drop_vars("label"), lazy.compute().drop_vars("label"))
    assert (eager["label"].values == lazy["label"].values).all()


def test_geodataframe_equals_cli_output(
    capsys: pytest.CaptureFixture[str], tiny_model: str, shared_scenes: Path, tmp_path: Path
) -> None:
    scene = shared_scenes / "RGB.byte.tif"  # nodata edges: skipped chips must match too
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = tmp_path / "cli.gpkg"
    assert run_cli(capsys, "map", scene, "-l", labels, "-m", tiny_model, "--chip-size", "64", "-o", out).exit_code == 0
    import geopandas as gpd

    cli = gpd.read_file(out, layer="chips")
    ds = rioxarray.open_rasterio(scene, chunks={"y": 128}).geobimors.classify(LABELS, model=tiny_model, chip_size=64)
    api = ds.geobimors.to_geodataframe()
    assert list(api.columns) == list(cli.columns)
    assert len(api) == len(cli) and api.crs == cli.crs
    assert (
        api[["row", "col", "label", "label_2", "label_3", "model"]].values
        == cli[["row", "col", "label", "label_2", "label_3", "model"]].values
    ).all()
    np.testing.assert_allclose(api["score"], cli["score"], rtol=1e-5)
    np.testing.assert_allclose(api["valid_fraction"], cli["valid_fraction"], rtol=1e-6)
    assert all(a.equals_exact(b, 1e-6) for a, b in zip(api.geometry, cli.geometry))


def test_bad_arrays(tiny_model: str, tmp_path: Path) -> None:
    scene = make_geotiff(tmp_path / "nocrs.tif", random_rgb(32, 32), crs=None)
    with pytest.raises(InputError, match="no CRS"):
        rioxarray.open_rasterio(scene).geobimors.classify(LABELS, model=tiny_model, chip_size=16)
    with pytest.raises(InputError, match="band, y, x"):
        geobimors.classify(xr.DataArray(np.zeros((2, 2, 2, 2))), LABELS, model=tiny_model)


def test_scaling_matches_the_scene_pipeline(tmp_path: Path) -> None:
    """The array path scales 16-bit data with the same percentile range as `geobimors map` (one implementation)."""
    from geobimors.raster.scaling import scene_scale_range
    from geobimors.raster.scene import open_scene
    from geobimors.xarray import _scale_range

    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, (3, 40, 48)).astype(np.uint16)
    data[:, :5] = 0
    scene = make_geotiff(tmp_path / "u16.tif", data, nodata=0)
    expected = scene_scale_range(open_scene(str(scene)), (3, 2, 1), (5.0, 95.0))
    got = _scale_range(rioxarray.open_rasterio(scene).values, (3, 2, 1), (5.0, 95.0), 0.0)
    assert expected is not None
    assert got.low == pytest.approx(expected.low)
    assert got.high == pytest.approx(expected.high)
    assert got.low != got.high

"""A resumed run never mixes two versions of a scene: the run fingerprint follows the scene's files.

An interrupted ``map`` or ``embed`` leaves ``OUTPUT.partial`` to resume from. When the scene file
was rewritten since (same path, size and transform, other pixels), the resume is refused with the
usual ``--restart`` message; an untouched scene still resumes, alone or among several scenes.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geobimors.embeddings.embed import plan_embed
from geobimors.labels import read_labels
from geobimors.raster.identity import scene_identity
from geobimors.run.execute import LocalExecutor, Outcome
from geobimors.run.plan import MapSettings, plan_map
from geobimors.run.store import store_path

from cli_helpers import assert_one_line_error, run_cli
from rasters import make_geotiff, random_rgb

CHIPS = ["--chip-size", "8", "--batch-size", "8", "--progress", "none"]  # 64 x 64 px: 64 chips, 8 batches


def rewrite(path: Path) -> None:
    """New pixels in place: same size, shape and transform (what ``gdal_calc``/an editor in place does)."""
    before = os.stat(path).st_mtime_ns
    with rasterio.open(path, "r+") as ds:
        ds.write(255 - ds.read())
    st = os.stat(path)
    if st.st_mtime_ns == before:  # a file system with coarse timestamps: make the rewrite visible
        os.utime(path, ns=(st.st_atime_ns, before + 2_000_000_000))


@pytest.fixture()
def interrupt_after(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], None]:
    """Make the next run(s) deliver their first ``n`` batches, then behave like Ctrl-C (``None``: undo)."""
    original = LocalExecutor.map

    def arm(n: int | None) -> None:
        if n is None:
            monkeypatch.setattr(LocalExecutor, "map", original)
            return

        def interrupted(
            self: LocalExecutor, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]
        ) -> Iterator[Outcome]:
            # One thread: batches finish in the order they were planned, so "the first n" is always the same
            # n batches (with two, a loaded machine could finish a later batch first).
            self.threads = 1
            for i, outcome in enumerate(original(self, fn, tasks)):
                if i == n:
                    raise KeyboardInterrupt
                yield outcome

        monkeypatch.setattr(LocalExecutor, "map", interrupted)

    return arm


# --- the identity itself ----------------------------------------------------------------------------


def test_scene_identity_is_stable_and_follows_rewrites_sidecars_and_vrt_sources(tmp_path: Path) -> None:
    scene = make_geotiff(tmp_path / "scene.tif", random_rgb(32, 32))
    first = scene_identity(str(scene))
    assert first is not None and scene_identity(str(scene)) == first  # untouched: the same, run after run
    with rasterio.open(scene):  # reading changes nothing
        pass
    assert scene_identity(str(scene)) == first
    size = scene.stat().st_size
    rewrite(scene)
    assert scene.stat().st_size == size
    second = scene_identity(str(scene))
    assert second is not None and second != first
    # Sidecars GDAL reads with the file (here a .aux.xml that sets nodata) are part of it.
    (tmp_path / "scene.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><NoDataValue>0</NoDataValue></PAMRasterBand></PAMDataset>'
    )
    with rasterio.open(scene) as ds:
        assert ds.nodata == 0  # GDAL reads it
    assert scene_identity(str(scene)) not in (first, second)
    # A VRT: its own file and its sources.
    source = make_geotiff(tmp_path / "source.tif", random_rgb(32, 32, seed=1))
    vrt = tmp_path / "mosaic.vrt"
    with rasterio.open(source) as ds:
        vrt.write_text(_vrt_for(ds, "source.tif"))
    mosaic = scene_identity(str(vrt))
    assert mosaic is not None and scene_identity(str(vrt)) == mosaic
    rewrite(source)
    assert scene_identity(str(vrt)) != mosaic
    # A local archive counts as its file.
    archive = tmp_path / "tiles.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(scene, "a.tif")
    zipped = scene_identity(f"/vsizip/{archive}/a.tif")
    assert zipped is not None and scene_identity(f"/vsizip/{archive}/a.tif") == zipped
    with zipfile.ZipFile(archive, "a") as zf:
        zf.write(source, "b.tif")
    assert scene_identity(f"/vsizip/{archive}/a.tif") != zipped
    # What cannot be stat-ed has no identity: the fingerprint stays as it was before identities.
    for remote in ("/vsicurl/https://example.com/a.tif", "https://example.com/a.tif", "/vsimem/a.tif"):
        assert scene_identity(remote) is None


def _vrt_for(ds: rasterio.io.DatasetReader, name: str) -> str:
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{name}</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>"
        for b in range(1, ds.count + 1)
    )
    transform = ", ".join(str(v) for v in ds.transform.to_gdal())
    return (
        f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}"><SRS>{ds.crs.to_wkt()}</SRS>'
        f"<GeoTransform>{transform}</GeoTransform>{bands}</VRTDataset>"
    )


def test_plan_fingerprints_follow_the_scene_file(tiny_model: str, labels_file: Path, tmp_path: Path) -> None:
    scene = make_geotiff(tmp_path / "scene.tif", random_rgb(64, 64))
    settings = MapSettings(str(scene), tuple(read_labels(labels_file)), tiny_model, chip_size="8")

    def fingerprints() -> tuple[str, str]:
        return plan_map(settings).fingerprint(), plan_embed(settings).fingerprint()

    before = fingerprints()
    assert fingerprints() == before  # a new plan of the untouched file: the same run
    rewrite(scene)
    after = fingerprints()
    assert after[0] != before[0] and after[1] != before[1]
    assert fingerprints() == after


# --- map and embed: refused after a rewrite, resumed without one --------------------------------------


def _map_args(scene: Path, labels: Path, model: str, out: Path) -> list[Any]:
    return ["map", scene, "-l", labels, "-m", model, *CHIPS, "-o", out]


def _embed_args(scene: Path, labels: Path, model: str, out: Path) -> list[Any]:
    return ["embed", scene, "-m", model, *CHIPS, "-o", out]


COMMANDS = {"map": (_map_args, ".gpkg"), "embed": (_embed_args, ".parquet")}


@pytest.mark.parametrize("rewritten", [True, False], ids=["rewritten", "untouched"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_rewritten_scene_is_not_resumed_into_and_an_untouched_one_is(
    command: str,
    rewritten: bool,
    capsys: pytest.CaptureFixture[str],
    tiny_model: str,
    labels_file: Path,
    tmp_path: Path,
    interrupt_after: Callable[[int | None], None],
) -> None:
    make_args, suffix = COMMANDS[command]
    scene = make_geotiff(tmp_path / "scene.tif", random_rgb(64, 64))
    out = tmp_path / f"out{suffix}"
    args = make_args(scene, labels_file, tiny_model, out)
    interrupt_after(3)
    stopped = run_cli(capsys, *args)
    assert stopped.exit_code == 130, stopped.err
    assert not out.exists() and store_path(out).is_dir()
    interrupt_after(None)
    if not rewritten:
        with rasterio.open(scene) as ds:  # read by something else meanwhile: still the same file
            ds.read(1)
        resumed = run_cli(capsys, *args)
        assert resumed.exit_code == 0, resumed.err
        assert "resumed: 24 chips" in resumed.out, resumed.out
        assert out.exists() and not store_path(out).exists()
        return
    rewrite(scene)
    refused = run_cli(capsys, *args)
    assert_one_line_error(refused, 2, "unfinished run", "--restart")
    assert not out.exists() and store_path(out).is_dir()  # the stored work is kept until the user says
    restarted = run_cli(capsys, *args, "--restart")
    assert restarted.exit_code == 0, restarted.err
    assert "resumed" not in restarted.out and out.exists() and not store_path(out).exists()


def test_multi_scene_runs_resume_untouched_scenes_and_redo_rewritten_ones(
    capsys: pytest.CaptureFixture[str],
    tiny_model: str,
    labels_file: Path,
    tmp_path: Path,
    interrupt_after: Callable[[int | None], None],
) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    make_geotiff(folder / "a.tif", random_rgb(32, 32, seed=1), transform=from_origin(500_000.0, 5e6, 10.0, 10.0))
    b = make_geotiff(folder / "b.tif", random_rgb(32, 32, seed=2), transform=from_origin(500_320.0, 5e6, 10.0, 10.0))
    out = tmp_path / "out.gpkg"
    args = ["map", str(folder), "-l", str(labels_file), "-m", tiny_model, *CHIPS, "-o", str(out)]
    # 16 chips, 2 batches per scene: let scene a finish and b store nothing.
    interrupt_after(2)
    assert run_cli(capsys, *args).exit_code == 130
    interrupt_after(None)
    assert store_path(out).is_dir()
    untouched = run_cli(capsys, *args)
    assert untouched.exit_code == 0, untouched.err
    assert "resumed: 16 chips" in untouched.out, untouched.out
    # Once more: interrupted after scene a, then b rewritten: a resumes, b is mapped again (never mixed).
    out2 = tmp_path / "out2.gpkg"
    args2 = [*args[:-1], str(out2)]
    interrupt_after(3)  # a's two batches and one of b's
    assert run_cli(capsys, *args2).exit_code == 130
    interrupt_after(None)
    stored = len(list(store_path(out2).glob("scene-*/batch-*.parquet")))
    assert stored == 3, stored
    rewrite(b)
    again = run_cli(capsys, *args2)
    assert again.exit_code == 0, again.err
    assert "resumed: 16 chips" in again.out, again.out  # a's 16; b's stored batch belonged to the old file
    chips = _chips(out2)
    fresh = tmp_path / "fresh.gpkg"
    assert run_cli(capsys, *args[:-1], str(fresh)).exit_code == 0
    assert np.array_equal(chips, _chips(fresh))


def _chips(path: Path) -> np.ndarray:
    import geopandas as gpd

    frame = gpd.read_file(path, layer="chips")
    columns = [c for c in ("scene", "row", "col", "label", "score") if c in frame.columns]
    frame = frame.sort_values(columns[:3]).reset_index(drop=True)
    return frame[columns].to_numpy()

"""Dask clusters, resume after kill -9, locks and unreadable windows (real LocalClusters on loopback)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from geobimors.labels import read_labels
from geobimors.run.execute import DistributedExecutor
from geobimors.run.pipeline import map_to_file
from geobimors.run.plan import MapSettings, plan_map
from geobimors.run.store import RunLock, store_path

from cli_helpers import assert_one_line_error, map_command, run_cli, wait_for_parts
from rasters import make_geotiff, random_rgb


@pytest.fixture()
def big_scene(tmp_path: Path) -> Path:
    """512 x 512 px: 1,024 chips of 16 px, 64 batches of 16."""
    return make_geotiff(tmp_path / "big.tif", random_rgb(512, 512, seed=3))


def chips_of(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer="chips")


def assert_same_chips(a: Path, b: Path) -> None:
    x, y = chips_of(a), chips_of(b)
    assert len(x) == len(y)
    assert x.drop(columns="geometry").equals(y.drop(columns="geometry"))
    assert all(p.equals_exact(q, 0) for p, q in zip(x.geometry, y.geometry))


def settings(scene: Path, labels: Path, model: str, **extra: object) -> MapSettings:
    return MapSettings(
        scene=str(scene),
        labels=tuple(read_labels(labels)),
        model=model,
        chip_size="16",
        batch_size=16,
        device="cpu",
        **extra,
    )  # type: ignore[arg-type]


def test_cluster_output_equals_in_process(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    local, cluster = tmp_path / "local.gpkg", tmp_path / "cluster.gpkg"
    args = ["map", rgb_scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "16", "--batch-size", "8"]
    assert run_cli(capsys, *args, "-o", local).exit_code == 0
    result = run_cli(capsys, *args, "-o", cluster, "--workers", "2")
    assert result.exit_code == 0, result.err
    assert "Dask: local Dask cluster, 2 worker processes" in result.err
    assert_same_chips(local, cluster)


def test_a_worker_killed_mid_run(tiny_model: str, big_scene: Path, labels_file: Path, tmp_path: Path) -> None:
    plan = plan_map(settings(big_scene, labels_file, tiny_model))
    reference = tmp_path / "reference.gpkg"
    map_to_file(plan, reference, progress_mode="none")
    executor = DistributedExecutor(workers=2)
    out = tmp_path / "out.gpkg"
    try:
        # Workers get their share of the cores for OpenMP, and not Dask's allocator setting that slows torch.
        names = ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
        environ = executor.client.run(lambda: {k: os.environ.get(k) for k in names})
        share = str(max(1, (os.cpu_count() or 1) // 2))
        assert list(environ.values()) == [{"OMP_NUM_THREADS": share, "MALLOC_TRIM_THRESHOLD_": None}] * 2
        pids = list(executor.client.run(os.getpid).values())
        errors: list[BaseException] = []

        def run() -> None:
            try:
                map_to_file(plan, out, progress_mode="none", executor=executor)
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        wait_for_parts(store_path(out), 5, thread.is_alive)
        os.kill(pids[0], signal.SIGKILL)
        thread.join(timeout=300)
        assert not errors, errors
    finally:
        executor.close()
    chips = chips_of(out)
    assert len(chips) == 32 * 32 and not chips.duplicated(["row", "col"]).any()
    assert_same_chips(reference, out)


def test_client_killed_then_resumed(
    capsys: pytest.CaptureFixture[str], tiny_model: str, big_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference.gpkg"
    map_to_file(plan_map(settings(big_scene, labels_file, tiny_model)), reference, progress_mode="none")
    out = tmp_path / "out.gpkg"
    args = map_command(big_scene, labels_file, tiny_model, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env)
    parts = store_path(out)
    wait_for_parts(parts, 5, lambda: proc.poll() is None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and parts.is_dir()
    stored = len(list(parts.glob("batch-*.parquet")))
    # Another configuration refuses to mix into the stored run (in this process: a new start costs seconds).
    command = args[1:-1]  # without the executable and -q
    assert_one_line_error(run_cli(capsys, *command, "--top-k", "2", "-q"), 2, "--restart")
    resumed = run_cli(capsys, *command)
    assert resumed.exit_code == 0, resumed.err
    assert f"resumed: {stored * 16} chips" in resumed.out
    assert not parts.exists() and not Path(str(out) + ".lock").exists()
    assert_same_chips(reference, out)


def test_concurrent_writers_are_refused(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, labels_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.gpkg"
    with RunLock(out):
        result = run_cli(capsys, "map", rgb_scene, "-l", labels_file, "-m", tiny_model, "-o", out, "--chip-size", "32")
        assert_one_line_error(result, 2, "another geobimors run", "is writing")
        assert not out.exists()
    assert (
        run_cli(capsys, "map", rgb_scene, "-l", labels_file, "-m", tiny_model, "-o", out, "--chip-size", "32").exit_code
        == 0
    )


def _corrupt_tile(path: Path, col: int, row: int) -> None:
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)


def test_unreadable_windows_fail_alone(
    capsys: pytest.CaptureFixture[str], tiny_model: str, labels_file: Path, tmp_path: Path
) -> None:
    scene = make_geotiff(
        tmp_path / "corrupt.tif",
        random_rgb(64, 64, seed=8),
        tiled=True,
        blockxsize=16,
        blockysize=16,
        compress="deflate",
        interleave="band",
    )
    _corrupt_tile(scene, 1, 2)  # the chip at row 2, col 1
    out = tmp_path / "out.gpkg"
    result = run_cli(capsys, "map", scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "16", "-o", out)
    assert result.exit_code == 1
    assert "15 classified" in result.out and "1 failed" in result.out
    assert "Warning: 1 chips could not be read (first at row 2, col 1" in result.err
    chips = chips_of(out)
    assert len(chips) == 15 and not ((chips["row"] == 2) & (chips["col"] == 1)).any()
    failed = gpd.read_file(out, layer="failed")
    assert failed[["row", "col"]].values.tolist() == [[2, 1]] and failed["error"].iloc[0]
    assert np.isclose(failed.geometry.iloc[0].area, 16 * 16 * 100)

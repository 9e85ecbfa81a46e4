"""A real Dask cluster: a `dask scheduler` and two `dask worker` processes over TCP, started by the test.

What this checks on a CPU-only machine, and what it cannot:

* ``geobimors map --scheduler tcp://...`` writes the same GeoPackage as an in-process run; every
  task ran in a worker process (the workers' executed-task counters add up to the batches) and the
  client never read a chip (its ``ChipReader.read_batch`` is never called; the in-process run calls it,
  so the check can fail); what the client submits per task is a few hundred bytes, not pixels.
* GPU routing: tasks of a ``gpu=True`` executor (what ``--device cuda`` makes) carry the ``GPU``
  resource annotation and run only on the worker started with ``--resources GPU=1``. The model runs
  on the CPU here (no GPU on this machine): that the CUDA forward pass itself works on such a worker
  is not tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import geopandas as gpd
import pytest

from geobimors.labels import read_labels
from geobimors.raster.read import ChipReader
from geobimors.run.cluster import dask_environment, worker_environment
from geobimors.run.execute import DistributedExecutor
from geobimors.run.pipeline import map_to_file
from geobimors.run.plan import MapSettings, plan_map

from cli_helpers import run_cli
from rasters import make_geotiff, random_rgb

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))


class Cluster:
    """Addresses and processes of a scheduler and two workers (``cpu`` and ``gpu``, one thread each)."""

    def __init__(self, address: str, processes: list[subprocess.Popen[bytes]]) -> None:
        self.address = address
        self.processes = processes

    def executed(self) -> dict[str, int]:
        """Tasks each worker (by name) has executed so far."""
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            counts = client.run(lambda dask_worker: (dask_worker.name, dask_worker.state.executed_count))
        return dict(counts.values())


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(processes):  # workers first, then the scheduler
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 20
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own process group (start_new_session): only what it started
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    scheduler_file = root / "scheduler.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        **dask_environment(1),  # the recommended worker settings (docs/distributed.md), 1 thread per worker
    }
    common = ["--no-dashboard"]
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, log: str) -> None:
        with open(root / log, "wb") as out:
            processes.append(
                subprocess.Popen([DASK, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )

    try:
        start("scheduler", "--port", "0", "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file),
              log="scheduler.log")  # fmt: skip
        worker = ["worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", *common]
        start(*worker, "--name", "cpu", log="cpu.log")
        start(*worker, "--name", "gpu", "--resources", "GPU=1", log="gpu.log")
        deadline = time.monotonic() + 120
        while not scheduler_file.exists() and time.monotonic() < deadline:
            assert processes[0].poll() is None, (root / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://")
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            names = sorted(w["name"] for w in client.scheduler_info()["workers"].values())
            assert names == ["cpu", "gpu"]
            pids = set(client.run(os.getpid).values())
            names = tuple(worker_environment(1))
            environ = list(client.run(lambda: {k: os.environ.get(k) for k in names}).values())
        assert os.getpid() not in pids and len(pids) == 2  # separate processes
        # The nanny started the workers with the recommended settings, not its own OMP/trim defaults.
        assert environ == [worker_environment(1)] * 2
        yield Cluster(address, processes)
    finally:
        _stop(processes)


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    """128 x 128 px: 64 chips of 16 px, 8 batches of 8."""
    return make_geotiff(tmp_path / "scene.tif", random_rgb(128, 128, seed=11))


@pytest.fixture()
def client_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Chip batches read in this (the client's) process."""
    calls: list[int] = []
    original = ChipReader.read_batch

    def counted(self: ChipReader, chips: Any) -> Any:
        calls.append(len(chips))
        return original(self, chips)

    monkeypatch.setattr(ChipReader, "read_batch", counted)
    return calls


@pytest.fixture()
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What this process submits to a scheduler: pickled size of each task's arguments, its resources."""
    from distributed import Client

    records: list[dict[str, Any]] = []
    original = Client.submit

    def recording(self: Client, fn: Any, *args: Any, **kwargs: Any) -> Any:
        records.append({"bytes": len(cloudpickle.dumps(args)), "resources": kwargs.get("resources")})
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(Client, "submit", recording)
    return records


def chips(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer="chips")


def test_map_on_a_separate_process_cluster(
    capsys: pytest.CaptureFixture[str],
    cluster: Cluster,
    tiny_model: str,
    scene: Path,
    labels_file: Path,
    tmp_path: Path,
    client_reads: list[int],
    submitted: list[dict[str, Any]],
) -> None:
    args = ["map", scene, "-l", labels_file, "-m", tiny_model, "--chip-size", "16", "--batch-size", "8"]
    local, remote = tmp_path / "local.gpkg", tmp_path / "remote.gpkg"
    assert run_cli(capsys, *args, "-o", local).exit_code == 0
    assert sum(client_reads) == 64  # in-process, the client reads every chip (so the check below can fail)
    client_reads.clear()
    before = cluster.executed()
    result = run_cli(capsys, *args, "-o", remote, "--scheduler", cluster.address)
    assert result.exit_code == 0, result.err
    assert f"Dask: Dask cluster at {cluster.address}" in result.err
    after = cluster.executed()
    # Every batch ran in a worker process; the client read no chip.
    assert sum(after[name] - before[name] for name in after) == 8
    assert client_reads == []
    # Tasks carry settings, not pixels: a batch of 8 chips of 16 x 16 x 3 is 6,144 bytes of pixels.
    assert len(submitted) == 8 and max(r["bytes"] for r in submitted) < 4096, submitted
    assert all(r["resources"] is None for r in submitted)
    x, y = chips(local), chips(remote)
    assert x.drop(columns="geometry").equals(y.drop(columns="geometry"))
    assert all(p.equals_exact(q, 0) for p, q in zip(x.geometry, y.geometry))


def test_gpu_tasks_run_only_on_the_gpu_worker(
    cluster: Cluster, tiny_model: str, scene: Path, labels_file: Path, tmp_path: Path, submitted: list[dict[str, Any]]
) -> None:
    settings = MapSettings(
        scene=str(scene),
        labels=tuple(read_labels(labels_file)),
        model=tiny_model,
        chip_size="16",
        batch_size=8,
        device="cpu",  # no GPU here: the model runs on the CPU of the worker that holds the GPU resource
    )
    plan = plan_map(settings)
    reference = tmp_path / "reference.gpkg"
    map_to_file(plan, reference, progress_mode="none")
    before = cluster.executed()
    executor = DistributedExecutor(cluster.address, gpu=True)  # what --device cuda makes
    try:
        out = tmp_path / "gpu.gpkg"
        map_to_file(plan, out, progress_mode="none", executor=executor)
    finally:
        executor.close()
    after = cluster.executed()
    assert after["gpu"] - before["gpu"] == 8 and after["cpu"] == before["cpu"]
    assert [r["resources"] for r in submitted] == [{"GPU": 1}] * 8
    assert chips(reference).drop(columns="geometry").equals(chips(out).drop(columns="geometry"))


def test_cuda_runs_ask_for_gpu_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's executor for --device cuda asks for the GPU resource (checked without starting one)."""
    from geobimors.run import execute

    made: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, address: str | None = None, workers: int | None = None, gpu: bool = False) -> None:
            made.append({"address": address, "gpu": gpu})

    monkeypatch.setattr(execute, "DistributedExecutor", Recorder)
    execute.make_executor("tcp://head:8786", gpu=True)
    execute.make_executor("tcp://head:8786", gpu=False)
    assert made == [{"address": "tcp://head:8786", "gpu": True}, {"address": "tcp://head:8786", "gpu": False}]


def test_a_local_cluster_leaves_this_process_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask's nanny writes its worker settings into the environment of the process that starts it.

    Left there, every later cluster or subprocess of this process would inherit them (a variable in the
    environment wins over the nanny's setting): workers with 2 OpenMP threads each on 2 cores ran 5-9x
    slower in benchmarks/bench_distributed.py before this was fixed.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")

    def settings() -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in names}

    before = settings()
    executor = DistributedExecutor(workers=1)
    try:
        assert settings() == before
        (worker,) = executor.client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()
        assert worker == str(os.cpu_count() or 1)  # its share of the cores, not this process's 7
    finally:
        executor.close()
    assert settings() == before


def test_the_scheduler_connect_timeout_is_dask_s_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """--scheduler waits as long as Dask's configured connect timeout (a slow network can raise it), and says so."""
    import dask
    import distributed

    from geobimors.errors import InputError

    asked: list[object] = []

    def unreachable(address: str, timeout: object = None, **kwargs: Any) -> None:
        asked.append(timeout)
        raise OSError(f"Timed out trying to connect to {address} after {timeout}")

    monkeypatch.setattr(distributed, "Client", unreachable)
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "75s"}),
        pytest.raises(InputError, match="DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT") as raised,
    ):
        DistributedExecutor("tcp://head:8786")
    assert asked == ["75s"]
    assert "cannot reach the Dask scheduler at tcp://head:8786" in str(raised.value)

"""The cluster recipes of docs/distributed.md: recommended worker settings and dask-jobqueue job scripts.

dask-jobqueue renders a job script without any batch system (no sbatch/qsub is called); the
scheduler it starts is a local one, closed at once.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from geobimors.run.cluster import DASK_ENVIRON_VARIABLE, dask_environment, jobqueue_options, worker_environment


def test_worker_environment() -> None:
    assert worker_environment(8) == {
        "OMP_NUM_THREADS": "8",
        "MKL_NUM_THREADS": "8",
        "OPENBLAS_NUM_THREADS": "8",
        "MALLOC_TRIM_THRESHOLD_": "134217728",
        "MALLOC_MMAP_THRESHOLD_": "33554432",
    }
    # The variables themselves (they win over the nanny's setting), and the same as that Dask setting.
    import dask

    environment = dask_environment(4)
    value = environment.pop(DASK_ENVIRON_VARIABLE)
    assert environment == worker_environment(4)
    config = dask.config.collect_env({DASK_ENVIRON_VARIABLE: value})
    assert config["distributed"]["nanny"]["pre_spawn_environ"] == worker_environment(4)
    with pytest.raises(ValueError):
        worker_environment(0)


def _render(cluster_class: Any, **options: Any) -> str:
    cluster = cluster_class(**options, scheduler_options={"dashboard_address": ":0"})
    try:
        return str(cluster.job_script())
    finally:
        cluster.close()


def _prologue_value(script: str) -> dict[str, str]:
    line = next(line for line in script.splitlines() if line.startswith(f"export {DASK_ENVIRON_VARIABLE}="))
    value = shlex.split(line.split("=", 1)[1])[0]
    return dict(json.loads(value))


def test_slurm_gpu_job_script() -> None:
    jobqueue = pytest.importorskip("dask_jobqueue", reason="pip install 'geobimors[cluster]'")
    options = jobqueue_options(cores=8, memory="64GiB", gpu=True, walltime="08:00:00", python="/opt/geo/bin/python")
    script = _render(jobqueue.SLURMCluster, **options, job_extra_directives=["--gres=gpu:1"])
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 08:00:00" in script
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH --mem=" in script
    command = script.strip().splitlines()[-1]
    assert command.startswith("/opt/geo/bin/python -m distributed.cli.dask_worker tcp://")
    # One worker process with the GPU resource, its threads reading windows for the GPU.
    assert "--nworkers" not in command and "--nthreads 8" in command and "--resources GPU=1" in command
    assert _prologue_value(script) == worker_environment(8)


def test_pbs_cpu_job_script() -> None:
    jobqueue = pytest.importorskip("dask_jobqueue", reason="pip install 'geobimors[cluster]'")
    options = jobqueue_options(cores=32, memory="128GiB")
    script = _render(jobqueue.PBSCluster, **options, resource_spec="select=1:ncpus=32:mem=128GB")
    assert "#PBS -l select=1:ncpus=32:mem=128GB" in script and "#PBS -l walltime=04:00:00" in script
    command = script.strip().splitlines()[-1]
    # A CPU job: one process using every core (one model in memory), no GPU resource.
    assert "--nworkers" not in command and "--nthreads 32" in command and "--resources" not in command
    assert _prologue_value(script) == worker_environment(32)


def test_bad_job_options() -> None:
    with pytest.raises(ValueError, match="one worker process per GPU job"):
        jobqueue_options(cores=8, memory="8GiB", gpu=True, processes=2)
    # A big CPU node split into 4 processes of 16 threads (fewer threads per GIL, 4 models in memory).
    four = jobqueue_options(cores=64, memory="8GiB", processes=4)
    assert four["processes"] == 4 and _prologue_value("\n".join(four["job_script_prologue"])) == worker_environment(16)
    with pytest.raises(ValueError):
        jobqueue_options(cores=0, memory="8GiB")

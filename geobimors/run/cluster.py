"""Recommended settings for Dask workers started outside geobimors (by hand, dask-jobqueue, Kubernetes).

``geobimors map --workers N`` configures its own worker processes. Workers that a batch system or
Kubernetes starts need the same care, written once here and used by docs/distributed.md, the
benchmarks and the tests:

* each worker process gives torch and its BLAS its share of the cores (Dask's nanny otherwise sets
  ``OMP_NUM_THREADS=1``), and a larger malloc trim threshold than Dask's default (which halves the
  throughput of torch on CPU, docs/benchmarks.md);
* a GPU worker is one process with one GPU, ``--resources GPU=1``: tasks of ``--device cuda`` runs
  ask for that resource, so one GPU runs one model at a time.

Nothing here imports Dask.
"""

from __future__ import annotations

import json
from typing import Any

DASK_ENVIRON_VARIABLE = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
MALLOC_TRIM_THRESHOLD = 134_217_728
MALLOC_MMAP_THRESHOLD = 33_554_432


def worker_environment(threads: int) -> dict[str, str]:
    """Environment of one worker process that uses ``threads`` cores.

    Args:
        threads: cores of the worker process (its ``--nthreads``; torch uses as many).
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    value = str(threads)
    return {
        "OMP_NUM_THREADS": value,
        "MKL_NUM_THREADS": value,
        "OPENBLAS_NUM_THREADS": value,
        "MALLOC_TRIM_THRESHOLD_": str(MALLOC_TRIM_THRESHOLD),
        "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD),
    }


def dask_environment(threads: int) -> dict[str, str]:
    """Environment variables that make Dask's nanny start worker processes with :func:`worker_environment`.

    The nanny overwrites ``OMP_NUM_THREADS`` and ``MALLOC_TRIM_THRESHOLD_`` in the processes it starts
    (its ``distributed.nanny.pre-spawn-environ`` setting), so exporting them in the shell is not enough:
    this sets that Dask setting itself. Put it in the environment of ``dask worker`` (a job script, a
    Kubernetes container spec).
    """
    return {DASK_ENVIRON_VARIABLE: json.dumps(worker_environment(threads), sort_keys=True)}


def jobqueue_options(
    cores: int,
    memory: str,
    gpu: bool = False,
    walltime: str = "04:00:00",
    python: str | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Keyword arguments of a dask-jobqueue cluster (``SLURMCluster``, ``PBSCluster``, ...) for geobimors.

    One batch job runs ``processes`` worker processes on one node, each loading the model once.
    CPU jobs: one process of ``cores`` threads by default (torch uses them all). GPU jobs: one GPU
    and one worker process per job, with ``--resources GPU=1``; scale with more jobs
    (``cluster.scale(jobs=N)``). Plain ``dask worker`` processes on one node would all use the
    node's first GPU, so several GPUs per job are refused (dask-cuda's worker gives each process
    its own GPU, see docs/distributed.md). The batch system's GPU request (``--gres=gpu:1`` for
    SLURM, ``ngpus=1`` for PBS) is added by the caller (``job_extra_directives`` /
    ``resource_spec``), as it differs between sites.

    Args:
        cores: cores of one job.
        memory: memory of one job (``"64GiB"``).
        gpu: a job with one GPU.
        walltime: job time limit.
        python: the Python of the environment with geobimors on the nodes (default: dask-jobqueue's).
        processes: worker processes per job (1 for a GPU job).

    Returns:
        ``cores``, ``processes``, ``memory``, ``walltime``, ``worker_extra_args`` and
        ``job_script_prologue`` (and ``python`` when given).

    Raises:
        ValueError: for no cores, fewer than one process, or a GPU job with several processes.
    """
    if cores < 1 or processes < 1:
        raise ValueError("a job needs at least one core and one worker process")
    if gpu and processes != 1:
        raise ValueError(
            f"one worker process per GPU job, not {processes}: plain dask workers on one node all use its first GPU"
        )
    threads = max(1, cores // processes)
    options: dict[str, Any] = {
        "cores": cores,
        "processes": processes,
        "memory": memory,
        "walltime": walltime,
        "worker_extra_args": ["--resources", "GPU=1"] if gpu else [],
        "job_script_prologue": [f"export {name}='{value}'" for name, value in dask_environment(threads).items()],
    }
    if python is not None:
        options["python"] = python
    return options

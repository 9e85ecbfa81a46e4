"""Recommended settings for Dask workers started outside geobimors (by hand, dask-jobqueue, Kubernetes).

``geobimors map --workers N`` configures its own worker processes. Workers that a batch system or
Kubernetes starts need the same care, written once here and used by docs/distributed.md, the
benchmarks and the tests:

* each worker process gives torch and its BLAS its share of the cores (Dask's nanny otherwise sets
  ``OMP_NUM_THREADS=1``, and a process that inherited another value uses that: two workers each
  running two OpenMP threads on two cores ran 5-9x slower than one thread each, docs/benchmarks.md),
  and a larger malloc trim threshold than Dask's default (which halves the throughput of torch on CPU);
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
    """Environment of a ``dask worker`` command whose worker processes should get :func:`worker_environment`.

    Dask's nanny gives each worker process the variables of its ``distributed.nanny.pre-spawn-environ``
    setting (``OMP_NUM_THREADS=1``, a small ``MALLOC_TRIM_THRESHOLD_``), but a variable already in its own
    environment takes precedence. So this sets both: the variables themselves, and the same values as
    that Dask setting (``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON``). Put it in the environment of
    ``dask worker`` (a shell, a job script, a Kubernetes container spec).
    """
    environment = worker_environment(threads)
    return {**environment, DASK_ENVIRON_VARIABLE: json.dumps(environment, sort_keys=True)}


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

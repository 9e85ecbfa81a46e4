"""Executing tasks and streaming their outcomes back as they finish.

Both executors keep a bounded number of tasks in flight and hand each outcome back
as soon as its task finishes, submitting the next task in its place: a slow batch
(a slow read, a cold cache, a busy worker) holds up only its own slot, never a
wave of others, and a national-scale run never holds more than a window of tasks.
Outcomes arrive in completion order with their submission ``index``; callers that
need the scene order restore it (the run store writes batches by index).

The in-process default runs tasks on a pool of threads, so one task reads its chip
windows while another runs its forward pass (the classifier lets one forward pass
run at a time); :class:`DistributedExecutor` does the same on a Dask cluster.
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol


@dataclass
class Outcome:
    """What became of one task.

    Attributes:
        index: position of the task in submission order.
        args: the task's arguments.
        result: the task's return value (``None`` when it failed).
        error: the exception it raised, or ``None``.
    """

    index: int
    args: tuple[Any, ...]
    result: Any = None
    error: BaseException | None = None


class _Future(Protocol):
    """What streaming needs of a future (``concurrent.futures`` and ``distributed`` futures alike)."""

    def result(self) -> Any: ...

    def cancel(self) -> Any: ...

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None: ...


def stream(
    submit: Callable[[tuple[Any, ...]], _Future],
    tasks: Iterable[tuple[Any, ...]],
    in_flight: int,
    release: Callable[[Any], None] | None = None,
) -> Iterator[Outcome]:
    """Run tasks with at most ``in_flight`` submitted at once; yield outcomes as they finish.

    Args:
        submit: starts one task from its args and returns its future.
        tasks: args tuples, consumed lazily (one more each time a task finishes).
        in_flight: tasks submitted and not yet handed back.
        release: called with each future once its outcome is handed back.

    Closing the iterator early (break, an exception, KeyboardInterrupt) cancels the
    tasks not yet started; tasks already running finish on their own.
    """
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pending: dict[Any, tuple[int, tuple[Any, ...]]] = {}
    numbered = enumerate(tasks)

    def launch(count: int) -> None:
        for index, args in islice(numbered, count):
            future = submit(args)
            pending[future] = (index, args)
            future.add_done_callback(finished.put)

    try:
        launch(max(1, in_flight))
        while pending:
            try:
                future = finished.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive while waiting
            except queue.Empty:
                continue
            index, args = pending.pop(future)
            launch(1)  # the next task starts before this outcome is handled
            try:
                outcome = Outcome(index, args, result=future.result())
            except Exception as exc:  # the task's own error, reported to the consumer, which decides
                outcome = Outcome(index, args, error=exc)
            finally:
                if release is not None:
                    release(future)
            yield outcome
    finally:
        for future in pending:
            future.cancel()


class LocalExecutor:
    """Runs tasks on a pool of threads inside this process, streaming outcomes as they finish.

    Args:
        threads: tasks running at once (reads of one overlap compute of another).
        in_flight: tasks submitted ahead per thread (the next task is queued before a thread frees up).
    """

    description = "in-process (threads)"

    def __init__(self, threads: int = 2, in_flight: int = 2) -> None:
        self.threads = max(1, threads)
        self.in_flight = max(1, in_flight)

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]) -> Iterator[Outcome]:
        """Run ``fn(*args)`` for every args tuple; yield outcomes as they finish.

        Closing the iterator early (break, KeyboardInterrupt) cancels tasks not
        yet started and waits for the running ones.
        """
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="geobimors-task")
        try:
            yield from stream(lambda args: pool.submit(fn, *args), tasks, self.threads * self.in_flight)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Release resources (nothing to release in-process)."""


class DistributedExecutor:
    """Runs tasks on a ``dask.distributed`` cluster and streams outcomes as they finish.

    Tasks carry only small values (scene path, chip windows, model settings);
    workers read their own windows and keep their own models. A bounded number
    of tasks is in flight, so the scheduler never holds a national-scale graph.
    A worker that dies has its tasks rerun elsewhere by the scheduler.

    Args:
        address: scheduler address (``tcp://host:port``); ``None`` with
            ``workers`` starts a local cluster of that many processes.
        workers: worker processes of a local cluster.
        gpu: tasks ask for one ``GPU`` resource (workers started with
            ``--resources GPU=1``, or dask-cuda's ``LocalCUDACluster``).
        in_flight: tasks submitted ahead per worker thread.
    """

    def __init__(
        self, address: str | None = None, workers: int | None = None, gpu: bool = False, in_flight: int = 4
    ) -> None:
        import logging
        import os

        import dask
        from distributed import Client, LocalCluster

        from geobimors.errors import InputError
        from geobimors.run.plugins import TorchThreads

        if logging.getLogger().getEffectiveLevel() > logging.INFO:
            # distributed sets its loggers to INFO on import; its chatter is noise unless --debug.
            logging.getLogger("distributed").setLevel(logging.ERROR)

        self.cluster = None
        self.gpu = gpu
        if address is not None:
            # Dask's own setting (30 s unless configured), so that a cluster's users set it as for any Dask client.
            timeout = dask.config.get("distributed.comm.timeouts.connect")
            try:
                self.client = Client(address, timeout=timeout)
            except (OSError, TimeoutError) as exc:
                raise InputError(
                    f"cannot reach the Dask scheduler at {address} ({str(exc).splitlines()[0] if str(exc) else exc}); "
                    "check the address and that `dask scheduler` is running (a slow network: raise Dask's connect "
                    "timeout, e.g. DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s)"
                ) from None
            self.description = f"Dask cluster at {address}"
        else:
            n = max(1, workers or 1)
            cores = os.cpu_count() or 1
            threads = max(1, cores // n)
            # Dask's nanny starts workers with OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_=65536;
            # for torch that halves throughput (measured: 0.15 s instead of 0.07 s per mini batch,
            # even after torch.set_num_threads), so workers start with their share of the cores.
            environ = {name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
            # The nanny sets these in this process's own environment before it spawns a worker, and a
            # variable already set there wins over its setting: without the restore below, a later
            # cluster or subprocess of this process would inherit this cluster's thread count (measured:
            # 2 workers x 2 OpenMP threads on 2 cores, 5-9x slower than 1 thread each).
            saved = {name: os.environ.get(name) for name in (*environ, "MALLOC_TRIM_THRESHOLD_")}
            for name in saved:
                os.environ.pop(name, None)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _restored(saved):
                self.cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=threads,
                    processes=True,
                    dashboard_address=":0",
                    resources={"GPU": 1} if gpu else None,
                    silence_logs=50,
                )
            self.client = Client(self.cluster)
            self.client.register_plugin(TorchThreads(threads))  # N workers must not each use every core
            self.description = f"local Dask cluster, {n} worker processes x {threads} threads"
        self.in_flight = max(1, in_flight)

    @property
    def dashboard_link(self) -> str | None:
        """URL of the Dask dashboard, when one runs."""
        try:
            return str(self.client.dashboard_link)
        except Exception:  # no dashboard (bokeh missing or disabled)
            return None

    def _slots(self) -> int:
        threads = sum(self.client.nthreads().values()) or 1
        return threads * self.in_flight

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]) -> Iterator[Outcome]:
        """Run ``fn(*args)`` on the cluster; yield outcomes as they finish."""
        resources = {"GPU": 1} if self.gpu else None

        def submit(args: tuple[Any, ...]) -> Any:
            return self.client.submit(fn, *args, pure=False, resources=resources, retries=1)

        return stream(submit, tasks, self._slots(), release=lambda future: future.release())

    def close(self) -> None:
        """Disconnect, and stop the local cluster if this executor started one."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


@contextlib.contextmanager
def _restored(saved: dict[str, str | None]) -> Iterator[None]:
    """Put environment variables back to ``saved`` (``None``: unset) when the block ends."""
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_executor(
    scheduler: str | None = None, workers: int | None = None, gpu: bool = False
) -> LocalExecutor | DistributedExecutor:
    """The executor for the options: a cluster address, a local cluster size, or in-process.

    ``DASK_SCHEDULER_ADDRESS`` in the environment counts as ``scheduler``.
    """
    import os

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address is not None or workers:
        return DistributedExecutor(address, workers, gpu)
    return LocalExecutor(threads=4 if gpu else 2)

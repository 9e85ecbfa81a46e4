"""Executing tasks with Dask and streaming their outcomes back as they finish.

The embedded default runs tasks on Dask's threaded scheduler in this process.
Several tasks run at once, so one task reads its chip windows while another
runs its forward pass (the classifier lets one forward pass run at a time).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import dask


class Cancelled(Exception):
    """Raised inside tasks that start after the run was cancelled."""


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


class LocalExecutor:
    """Runs tasks on Dask's threaded scheduler inside this process.

    Args:
        threads: tasks running at once (reads of one overlap compute of another).
        wave: tasks per Dask graph; graphs are computed one after another so
            that national-scale runs never build one huge graph.

    """

    description = "in-process (Dask threads)"

    def __init__(self, threads: int = 2, wave: int = 256) -> None:
        self.threads = max(1, threads)
        self.wave = max(self.threads, wave)

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]) -> Iterator[Outcome]:
        """Run ``fn(*args)`` for every args tuple; yield outcomes as they finish.

        Closing the iterator early (break, KeyboardInterrupt) cancels tasks not
        yet started and waits for the running ones.
        """
        outcomes: queue.Queue[Outcome | BaseException | None] = queue.Queue()
        cancel = threading.Event()

        def call(index: int, args: tuple[Any, ...]) -> None:
            if cancel.is_set():
                return
            try:
                outcomes.put(Outcome(index, args, result=fn(*args)))
            except Exception as exc:  # reported to the consumer, which decides
                outcomes.put(Outcome(index, args, error=exc))

        def drive() -> None:
            try:
                numbered = enumerate(tasks)
                while not cancel.is_set():
                    wave = list(islice(numbered, self.wave))
                    if not wave:
                        break
                    graph = [dask.delayed(call, pure=False)(i, args) for i, args in wave]
                    dask.compute(*graph, scheduler="threads", num_workers=self.threads)
                outcomes.put(None)
            except BaseException as exc:  # scheduler failure: hand it to the consumer
                outcomes.put(exc)

        driver = threading.Thread(target=drive, name="geobimors-dask-driver", daemon=True)
        driver.start()
        try:
            while True:
                item = outcomes.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            driver.join()

    def close(self) -> None:
        """Release resources (nothing to release in-process)."""

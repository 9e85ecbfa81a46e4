"""Streaming execution: bounded tasks in flight, outcomes as they finish, cancellation on close."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from geobimors.run.execute import LocalExecutor


def _sleep_then_return(index: int, seconds: float) -> int:
    time.sleep(seconds)
    return index


def test_a_slow_task_does_not_hold_up_the_others() -> None:
    """Task 0 is slow: every other task finishes (and is handed back) before it."""
    tasks = [(0, 0.6)] + [(i, 0.01) for i in range(1, 20)]
    outcomes = list(LocalExecutor(threads=2).map(_sleep_then_return, tasks))
    assert sorted(o.index for o in outcomes) == list(range(20))
    assert [o.result for o in outcomes] == [o.index for o in outcomes]
    assert outcomes[-1].index == 0


def test_tasks_are_consumed_lazily_with_a_bounded_window() -> None:
    """Never more than threads x in_flight tasks taken from the generator ahead of the consumer."""
    taken = 0

    def tasks() -> Iterator[tuple[int, float]]:
        nonlocal taken
        for i in range(50):
            taken += 1
            yield (i, 0.0)

    handed = 0
    for _ in LocalExecutor(threads=2, in_flight=2).map(_sleep_then_return, tasks()):
        handed += 1
        assert taken - handed <= 4
    assert handed == 50


def test_errors_come_back_as_outcomes() -> None:
    def fail_on_odd(i: int) -> int:
        if i % 2:
            raise ValueError(f"bad {i}")
        return i

    outcomes = sorted(LocalExecutor().map(fail_on_odd, [(i,) for i in range(6)]), key=lambda o: o.index)
    assert [o.result for o in outcomes] == [0, None, 2, None, 4, None]
    assert [str(o.error) if o.error else None for o in outcomes] == [None, "bad 1", None, "bad 3", None, "bad 5"]


def test_closing_early_cancels_tasks_not_started() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def record(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.05)
        return i

    results = LocalExecutor(threads=1, in_flight=2).map(record, [(i,) for i in range(100)])
    first = next(results)
    results.close()  # what a break or Ctrl-C does
    assert first.index == 0
    assert len(started) <= 3  # the first, the one running when it came back, perhaps one queued


def test_interrupt_in_a_task_reaches_the_consumer() -> None:
    def interrupt(i: int) -> int:
        if i == 2:
            raise KeyboardInterrupt
        return i

    with pytest.raises(KeyboardInterrupt):
        list(LocalExecutor(threads=1).map(interrupt, [(i,) for i in range(10)]))

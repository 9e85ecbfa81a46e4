"""Waves against streaming execution (issue 18), with and without slow batches.

    python benchmarks/bench_executor.py [--json docs/benchmarks/executor.json]

A 3,000 x 3,000 px mosaic (2,209 chips of 64 px at 10 m, 70 batches of 32) is mapped to a
GeoPackage with the bundled mini model, in-process (2 threads) and on a LocalCluster of 2 worker
processes. In the "slow" scene one batch in ten sleeps 1 s before its read (a slow read, a cold
cache, a busy disk); in the "even" scene none does. Each executor runs with:

* ``waves``: the old executor, kept here only: tasks go in waves, and a wave starts when the
  slowest task of the one before has finished. In-process, waves of 256 tasks (the old default)
  and waves as large as the streaming window (4 tasks: 2 threads x 2); with 2 workers, waves
  as large as the streaming window (8 tasks: 2 workers x 1 thread x 4);
* ``stream``: geobimors' executors: the same bounded number of tasks in flight, the next task
  submitted as each one finishes.

Worker start-up and model loading are done before the timed runs; best of ``--repeats``.

``--synthetic`` runs the same executors on tasks that only sleep (0.1 s a batch of 32 chips, 1.1 s for
the slow ones): it measures scheduling alone, unaffected by other load on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from geobimors.heads.classifier import get_classifier
from geobimors.labels import read_labels
from geobimors.run.execute import DistributedExecutor, LocalExecutor, Outcome
from geobimors.run.pipeline import map_to_file
from geobimors.run.plan import MapSettings, plan_map
from geobimors.run.tasks import classify_batch

from common import DATA, ROOT, machine, make_mosaic

SLOW_EVERY = 10
SLOW_SECONDS = 1.0


def slow_reads(
    fn: Callable[..., Any], every: int, seconds: float, read: Any, classifier: Any, batch: Any, *rest: Any
) -> Any:
    """``fn`` with a delay before the read of one batch in ``every``."""
    if every and batch.index % every == every - 1:
        time.sleep(seconds)
    return fn(read, classifier, batch, *rest)


class LocalWaves(LocalExecutor):
    """The old in-process executor (before issue 18), kept here only: waves of ``dask.compute``."""

    def __init__(self, threads: int = 2, wave: int = 256) -> None:
        super().__init__(threads)
        self.wave = max(self.threads, wave)

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]) -> Iterator[Outcome]:
        import dask

        outcomes: queue.Queue[Outcome | BaseException | None] = queue.Queue()
        cancel = threading.Event()

        def call(index: int, args: tuple[Any, ...]) -> None:
            if cancel.is_set():
                return
            try:
                outcomes.put(Outcome(index, args, result=fn(*args)))
            except Exception as exc:
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
            except BaseException as exc:
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


class DistributedWaves(DistributedExecutor):
    """Waves of futures on the cluster: the next wave is submitted once every task of this one is done."""

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]) -> Iterator[Outcome]:
        from distributed import wait

        numbered = enumerate(tasks)
        while wave := list(islice(numbered, self._slots())):
            futures = [self.client.submit(fn, *args, pure=False, retries=1) for _, args in wave]
            wait(futures)
            for (index, args), future in zip(wave, futures):
                try:
                    yield Outcome(index, args, result=future.result())
                except Exception as exc:
                    yield Outcome(index, args, error=exc)
                future.release()


class SlowReads:
    """An executor whose tasks read slowly once in ``every`` batches (0: never)."""

    def __init__(self, executor: Any, every: int) -> None:
        self.executor = executor
        self.every = every

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]) -> Iterator[Outcome]:
        return self.executor.map(functools.partial(slow_reads, fn, self.every, SLOW_SECONDS), tasks)


def sleeping_batch(index: int, seconds: float) -> int:
    """A stand-in task: 32 chips that take ``seconds``."""
    time.sleep(seconds)
    return 32


def synthetic(configurations: list[tuple[str, str, Callable[[], Any]]], repeats: int) -> list[dict[str, Any]]:
    """Chips/s of every executor on sleeping tasks, 70 batches, with and without slow ones."""
    results = []
    for where, how, make in configurations:
        executor = make()
        for scene_kind, every in (("even", 0), ("slow", SLOW_EVERY)):
            tasks = [(i, 0.1 + (SLOW_SECONDS if every and i % every == every - 1 else 0.0)) for i in range(70)]
            times = []
            for _ in range(repeats):
                begin = time.perf_counter()
                chips = sum(outcome.result for outcome in executor.map(sleeping_batch, tasks))
                times.append(round(time.perf_counter() - begin, 2))
            row = {"execution": where, "executor": how, "scene": scene_kind, "tasks": "sleep", "map_s": times}
            row["chips_per_s"] = round(chips / min(times), 1)
            results.append(row)
            print(json.dumps(row), flush=True)
        executor.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "executor.json")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--synthetic", action="store_true", help="sleeping tasks instead of the model")
    args = parser.parse_args()
    configurations: list[tuple[str, str, Callable[[], Any]]] = [
        ("in-process", "waves of 256 (old default)", lambda: LocalWaves(wave=256)),
        ("in-process", "waves of 4", lambda: LocalWaves(wave=4)),
        ("in-process", "stream, 4 in flight", lambda: LocalExecutor(threads=2, in_flight=2)),
        ("2 workers", "waves of 8", lambda: DistributedWaves(workers=2)),
        ("2 workers", "stream, 8 in flight", lambda: DistributedExecutor(workers=2)),
    ]
    if args.synthetic:
        results = synthetic(configurations, args.repeats)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
        return
    scene = make_mosaic(DATA / "mosaic-3k.tif", size=3000)
    labels = tuple(read_labels(ROOT / "sample_data" / "labels.txt"))
    plan = plan_map(MapSettings(scene=str(scene), labels=labels, model="mini", device="cpu"))
    get_classifier(plan.classifier)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for where, how, make in configurations:
            executor = make()
            for _ in executor.map(classify_batch, [(plan.read, plan.classifier, plan.batch(0), 1)] * 4):
                pass  # every worker has its model before the clock starts
            for scene_kind, every in (("even", 0), ("slow", SLOW_EVERY)):
                times = []
                for repeat in range(args.repeats):
                    out = Path(tmp) / f"{len(results)}-{repeat}.gpkg"
                    begin = time.perf_counter()
                    summary = map_to_file(plan, out, progress_mode="none", executor=SlowReads(executor, every))
                    times.append(round(time.perf_counter() - begin, 2))
                    assert summary.n_classified + summary.n_skipped == plan.n_chips
                row = {
                    "execution": where,
                    "executor": how,
                    "scene": scene_kind,
                    "chips": plan.n_chips,
                    "batches": plan.n_batches,
                    "map_s": times,
                    "chips_per_s": round(plan.n_chips / min(times), 1),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
            executor.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

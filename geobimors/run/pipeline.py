"""The core mapping API that the CLI, the xarray API and the QGIS plugin share.

scene -> plan -> batches executed by Dask -> records (sidecar store) -> GeoPackage.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import pyarrow as pa

from geobimors.errors import GeobimorsError, RunError
from geobimors.heads.classifier import get_classifier
from geobimors.progress import Progress
from geobimors.run.execute import LocalExecutor, Outcome
from geobimors.run.plan import ScenePlan
from geobimors.run.store import RunStore, label_columns, result_table
from geobimors.run.tasks import BatchResult, classify_batch
from geobimors.vector.gpkg import GeoPackageWriter, check_output, records_to_frame


@dataclass
class RunSummary:
    """What a run did, for the closing summary.

    Attributes:
        plan: the plan that ran.
        output: the GeoPackage written, if any.
        n_classified: chips classified.
        n_skipped: chips skipped as mostly nodata.
        label_counts: chips per label (top-1).
        elapsed: seconds from start to end.
        resumed_chips: chips taken from an earlier interrupted run.

    """

    plan: ScenePlan
    output: Path | None = None
    n_classified: int = 0
    n_skipped: int = 0
    label_counts: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    resumed_chips: int = 0

    @property
    def chips_per_second(self) -> float:
        """Chips processed in this run per second (resumed chips excluded)."""
        processed = self.n_classified + self.n_skipped - self.resumed_chips
        return processed / self.elapsed if self.elapsed > 0 else 0.0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        total = self.n_classified + self.n_skipped
        out = [
            f"chips: {self.n_classified} classified, {self.n_skipped} skipped (mostly nodata) of {total}",
            f"grid: {self.plan.grid.describe()}",
        ]
        if total - self.resumed_chips > 0:
            out.append(f"time: {self.elapsed:.1f} s, {self.chips_per_second:.1f} chips/s")
        if self.resumed_chips:
            out.append(f"resumed: {self.resumed_chips} chips came from the interrupted earlier run")
        if self.label_counts:
            width = max(len(name) for name in self.label_counts)
            out.append("labels:")
            for name, count in self.label_counts.most_common():
                share = 100.0 * count / max(self.n_classified, 1)
                out.append(f"  {name:<{width}}  {count:>7}  {share:5.1f}%")
        elif total:
            out.append("labels: none (no chip had enough valid pixels; see --min-valid and --nodata)")
        if self.output is not None:
            out.append(f"output: {self.output}")
        return out


def _tasks(plan: ScenePlan, skip: set[int], with_probabilities: bool) -> Iterator[tuple[object, ...]]:
    for index in range(plan.n_batches):
        if index not in skip:
            yield (plan.read, plan.classifier, plan.batch(index), plan.top_k, with_probabilities)


def execute_plan(
    plan: ScenePlan,
    on_result: Callable[[BatchResult], None],
    skip: set[int] | None = None,
    executor: LocalExecutor | None = None,
    progress: Progress | None = None,
    with_probabilities: bool = False,
) -> None:
    """Run every batch of a plan (except ``skip``) and hand each result to ``on_result``.

    The classifier is loaded here first, so a bad model fails before any work.

    Raises:
        GeobimorsError: when a task fails; the message names the chip window.

    """
    get_classifier(plan.classifier)
    executor = executor or LocalExecutor()
    outcome: Outcome
    for outcome in executor.map(classify_batch, _tasks(plan, skip or set(), with_probabilities)):
        if outcome.error is not None:
            raise _task_error(plan, outcome)
        result: BatchResult = outcome.result
        on_result(result)
        if progress is not None:
            progress.update(len(result.rows))


def _task_error(plan: ScenePlan, outcome: Outcome) -> GeobimorsError:
    error = outcome.error
    if isinstance(error, GeobimorsError):
        return error
    batch = outcome.args[2]
    first = next(plan.grid.chips(batch.start, batch.start + 1))
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RunError(
        f"batch {batch.index} failed at chip row {first.row}, col {first.col} "
        f"(window col_off={first.col_off}, row_off={first.row_off}): {text}"
    )


def _output_columns(plan: ScenePlan) -> list[str]:
    return [name for pair in label_columns(plan.top_k) for name in pair]


def map_to_file(
    plan: ScenePlan,
    output: str | os.PathLike[str],
    overwrite: bool = False,
    regions: bool = False,
    restart: bool = False,
    progress_mode: str = "bar",
    executor: LocalExecutor | None = None,
) -> RunSummary:
    """Run a plan and write the labeled chips to a GeoPackage.

    Finished batches go to a sidecar store as they arrive; an interrupted run
    resumes from it when the same command runs again. The GeoPackage is written
    to a temporary file and renamed into place, then the store is removed.

    Args:
        plan: the validated plan.
        output: path of the ``.gpkg`` to write.
        overwrite: replace an existing output.
        regions: add a ``regions`` layer of dissolved same-label chips.
        restart: discard a stored unfinished run instead of resuming it.
        progress_mode: ``bar``, ``jsonl`` or ``none``.
        executor: where tasks run (in-process by default).

    Returns:
        The run summary.

    """
    start = time.monotonic()
    out = check_output(output, overwrite)
    summary = RunSummary(plan, output=out)
    get_classifier(plan.classifier)  # a bad model fails before a store is created
    store = RunStore.open(out, plan.fingerprint(), restart=restart)
    done = store.done()
    summary.resumed_chips = sum(len(range(plan.batch(i).start, plan.batch(i).stop)) for i in done)
    class_names = plan.classifier.class_names
    progress = Progress(plan.n_chips, progress_mode, initial=summary.resumed_chips)
    try:
        execute_plan(
            plan,
            lambda result: store.write(result.batch.index, result_table(result, class_names, plan.top_k)),
            skip=done,
            executor=executor,
            progress=progress,
        )
    finally:
        progress.close()
    columns = _output_columns(plan)
    extra = {"model": plan.settings.model}
    with GeoPackageWriter(out, overwrite, plan.describe()) as writer:
        for table in store.tables():
            _count(summary, table)
            writer.append(records_to_frame(table, plan.scene.transform, plan.scene.crs, columns, extra))
        writer.finish(class_names, regions=regions)
    store.remove()
    summary.elapsed = time.monotonic() - start
    progress.event("done", output=str(out))
    return summary


def _count(summary: RunSummary, table: pa.Table) -> None:
    classified = table.column("classified").to_numpy(zero_copy_only=False)
    summary.n_classified += int(classified.sum())
    summary.n_skipped += int((~classified).sum())
    summary.label_counts.update(label for label in table.column("label").to_pylist() if label is not None)


def map_plan(plan: ScenePlan, progress_mode: str = "bar", executor: LocalExecutor | None = None) -> gpd.GeoDataFrame:
    """Run a plan and return the labeled chips as a GeoDataFrame (no file written)."""
    tables: dict[int, pa.Table] = {}
    class_names = plan.classifier.class_names
    progress = Progress(plan.n_chips, progress_mode)
    try:
        execute_plan(
            plan,
            lambda result: tables.__setitem__(result.batch.index, result_table(result, class_names, plan.top_k)),
            executor=executor,
            progress=progress,
        )
    finally:
        progress.close()
    table = pa.concat_tables([tables[i] for i in sorted(tables)])
    return records_to_frame(
        table, plan.scene.transform, plan.scene.crs, _output_columns(plan), {"model": plan.settings.model}
    )

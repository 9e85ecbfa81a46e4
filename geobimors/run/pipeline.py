"""The core mapping API that the CLI, the xarray API and the QGIS plugin share.

scene -> plan -> batches executed by Dask -> records (sidecar store) -> GeoPackage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from geobimors.errors import GeobimorsError, RunError
from geobimors.heads.classifier import get_classifier
from geobimors.labels import short_label
from geobimors.progress import Progress
from geobimors.raster.read import unreadable_scene_error
from geobimors.run.byproduct import ByProduct
from geobimors.run.execute import DistributedExecutor, LocalExecutor, Outcome
from geobimors.run.plan import ScenePlan, check_output_safety
from geobimors.run.store import RunLock, RunStore, captions_table, label_columns, result_table
from geobimors.run.tasks import BatchResult, CaptionResult, caption_batch, classify_batch
from geobimors.vector.gpkg import FAILED_LAYER, GeoPackageWriter, check_output, failed_to_frame, records_to_frame

if TYPE_CHECKING:
    import geopandas as gpd


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
        load_seconds: of which loading the model in this process.
        resumed_chips: chips taken from an earlier interrupted run.
        n_failed: chips whose windows could not be read (in the ``failed`` layer).
        first_failure: where and why the first of them failed.
    """

    plan: ScenePlan
    output: Path | None = None
    n_classified: int = 0
    n_skipped: int = 0
    label_counts: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    load_seconds: float = 0.0
    resumed_chips: int = 0
    n_failed: int = 0
    first_failure: str | None = None

    @property
    def chips_per_second(self) -> float:
        """Chips processed per second of this run after the model loaded (resumed chips excluded)."""
        processed = self.n_classified + self.n_skipped + self.n_failed - self.resumed_chips
        seconds = self.elapsed - self.load_seconds
        return processed / seconds if seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        total = self.n_classified + self.n_skipped + self.n_failed
        failed = f", {self.n_failed} failed (unreadable)" if self.n_failed else ""
        out = [
            f"chips: {self.n_classified} classified, {self.n_skipped} skipped (mostly nodata){failed} of {total}",
            f"grid: {self.plan.grid.describe()}",
        ]
        if total - self.resumed_chips > 0:
            loading = f" (model loading {self.load_seconds:.1f} s)" if self.load_seconds >= 0.05 else ""
            out.append(f"time: {self.elapsed:.1f} s{loading}, {self.chips_per_second:.1f} chips/s")
        if self.resumed_chips:
            out.append(f"resumed: {self.resumed_chips} chips came from the interrupted earlier run")
        if self.label_counts:
            width = max(len(short_label(name)) for name in self.label_counts)
            out.append("labels:")
            for name, count in self.label_counts.most_common():
                share = 100.0 * count / max(self.n_classified, 1)
                out.append(f"  {short_label(name):<{width}}  {count:>7}  {share:5.1f}%")
        elif total:
            out.append("labels: none (no chip had enough valid pixels; see --min-valid and --nodata)")
        anchored = self.plan.anchored_labels
        if anchored:
            shown = ", ".join(short_label(p) for p in anchored[:5]) + (
                f" and {len(anchored) - 5} more" if len(anchored) > 5 else ""
            )
            out.append(
                f"anchored labels: {shown} (not phrasings {self.plan.classifier.model} was trained on: read through "
                "the nearest trained classes)"
            )
        if self.output is not None:
            out.append(f"output: {self.output}")
        return out


Executor = LocalExecutor | DistributedExecutor


def _caption_stage(
    plan: ScenePlan,
    executor: Executor,
    known: dict[int, str],
    done: set[int],
    on_result: Callable[[CaptionResult], None],
    progress_mode: str = "none",
) -> dict[int, str]:
    """Caption every valid chip (batches not in ``done``); returns all captions by chip index."""
    assert plan.captioner is not None
    size = plan.settings.caption_batch_size
    tasks = (
        (plan.read, plan.captioner, plan.settings.device, plan.settings.precision, plan.batch(i, size))
        for i in range(plan.n_caption_batches)
        if i not in done
    )
    captions = dict(known)
    initial = sum(plan.batch(i, size).stop - plan.batch(i, size).start for i in done)
    progress = Progress(plan.n_chips, progress_mode, desc="captions", initial=initial)
    try:
        for outcome in executor.map(caption_batch, tasks):
            if outcome.error is not None:
                raise _task_error(plan, outcome, 4)
            result: CaptionResult = outcome.result
            captions.update(zip(result.chips.tolist(), result.captions))
            on_result(result)
            progress.update(result.batch.stop - result.batch.start)
    finally:
        progress.close()
    return captions


def _tasks(
    plan: ScenePlan, skip: set[int], captions: dict[int, str] | None, with_embeddings: bool = False
) -> Iterator[tuple[object, ...]]:
    for index in range(plan.n_batches):
        if index in skip:
            continue
        batch = plan.batch(index)
        mine = {i: captions[i] for i in range(batch.start, batch.stop) if i in captions} if captions else None
        yield (plan.read, plan.classifier, batch, plan.top_k, mine, with_embeddings)


def stream_plans(
    plans: Sequence[ScenePlan],
    skips: Sequence[set[int]],
    executor: Executor,
    captions: Sequence[dict[int, str] | None] | None = None,
    with_embeddings: bool = False,
    stopped: Callable[[int], bool] = lambda i: False,
) -> Generator[tuple[int, Outcome], None, None]:
    """Run the batches of several plans as one stream of tasks; yield (plan index, outcome) as each finishes.

    One scene is the one-plan case. The stream never drains between plans; ``stopped(i)`` true
    (plan ``i`` failed) stops submitting plan ``i``'s remaining batches.
    """
    owners: list[int] = []

    def tasks() -> Iterator[tuple[object, ...]]:
        for i, plan in enumerate(plans):
            for args in _tasks(plan, skips[i], captions[i] if captions else None, with_embeddings):
                if stopped(i):
                    break
                owners.append(i)
                yield args

    for outcome in executor.map(classify_batch, tasks()):
        yield owners[outcome.index], outcome


def execute_plan(
    plan: ScenePlan,
    on_result: Callable[[BatchResult], None],
    skip: set[int] | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    captions: dict[int, str] | None = None,
    with_embeddings: bool = False,
) -> None:
    """Run every batch of a plan (except ``skip``) and hand each result to ``on_result``.

    Args:
        plan: the plan.
        on_result: called with each batch result as it arrives (in completion order).
        skip: batch indexes already done.
        executor: where tasks run (in-process threads by default).
        progress: counts chips.
        captions: captions from the captioning stage, by chip index.
        with_embeddings: tasks also return the pooled image embeddings of their chips.

    Raises:
        GeobimorsError: when a task fails; the message names the chip window.
    """
    executor = executor or LocalExecutor()
    for _, outcome in stream_plans([plan], [skip or set()], executor, [captions], with_embeddings):
        if outcome.error is not None:
            raise _task_error(plan, outcome, 2)
        result: BatchResult = outcome.result
        on_result(result)
        if progress is not None:
            progress.update(len(result.rows))


def _classify_all(
    plan: ScenePlan,
    executor: Executor,
    on_table: Callable[[pa.Table, int], None],
    progress_mode: str,
    skip: set[int] | None = None,
    captions: dict[int, str] | None = None,
    initial: int = 0,
    on_result: Callable[[BatchResult], None] | None = None,
) -> Progress:
    """Classify every batch (except ``skip``) with a progress bar; hand each batch's records to ``on_table``.

    With ``on_result``, tasks also return their chips' embeddings, and each result goes to it first.
    """
    names = plan.classifier.class_names

    def handle(result: BatchResult) -> None:
        if on_result is not None:
            on_result(result)
        on_table(result_table(result, names, plan.top_k), result.batch.index)

    progress = Progress(plan.n_chips, progress_mode, initial=initial)
    try:
        execute_plan(
            plan,
            handle,
            skip=skip,
            executor=executor,
            progress=progress,
            captions=captions,
            with_embeddings=on_result is not None,
        )
    finally:
        progress.close()
    return progress


def _task_error(plan: ScenePlan, outcome: Outcome, batch_arg: int) -> GeobimorsError:
    error = outcome.error
    if isinstance(error, GeobimorsError):
        return error
    batch = outcome.args[batch_arg]
    first = next(plan.grid.chips(batch.start, batch.start + 1))
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RunError(
        f"batch {batch.index} failed at chip row {first.row}, col {first.col} "
        f"(window col_off={first.col_off}, row_off={first.row_off}): {type(error).__name__}: {text}"
    )


def _output_columns(plan: ScenePlan) -> list[str]:
    columns = [name for pair in label_columns(plan.top_k) for name in pair]
    return [*columns, "caption"] if plan.writes_captions else columns


def _extra_columns(plan: ScenePlan) -> dict[str, str]:
    extra = {"model": plan.classifier.model}
    if plan.settings.head:
        extra["head"] = Path(plan.settings.head).name
    return extra


def map_to_file(
    plan: ScenePlan,
    output: str | os.PathLike[str],
    overwrite: bool = False,
    regions: bool = False,
    restart: bool = False,
    progress_mode: str = "bar",
    executor: Executor | None = None,
    on_start: Callable[[Executor], None] | None = None,
    embeddings: ByProduct | None = None,
) -> RunSummary:
    """Run a plan and write the labeled chips to a GeoPackage.

    Finished batches go to a sidecar store as they arrive; an interrupted run
    resumes from it when the same command runs again. The GeoPackage is written
    to a temporary file and renamed into place, then the store is removed. A
    lock keeps a second run from writing the same output at the same time.

    Args:
        plan: the validated plan.
        output: path of the ``.gpkg`` to write.
        overwrite: replace an existing output.
        regions: add a ``regions`` layer of dissolved same-label chips.
        restart: discard a stored unfinished run instead of resuming it.
        progress_mode: ``bar``, ``jsonl`` or ``none``.
        executor: where tasks run (in-process threads by default).
        on_start: called with the executor once the model is loaded (e.g. to print the dashboard link).
        embeddings: also write the chips' embeddings store (GeoParquet) from the same image pass
            (:class:`geobimors.embeddings.embed.EmbeddingsRequest`).

    Returns:
        The run summary.
    """
    start = time.monotonic()
    out = check_output(output, overwrite)
    check_output_safety(out, plan.settings)
    store_out = embeddings.check(overwrite) if embeddings is not None else None
    summary = RunSummary(plan, output=out)
    executor = executor or LocalExecutor()
    with RunLock(out), RunLock(store_out) if store_out is not None else contextlib.nullcontext():
        if isinstance(executor, LocalExecutor) or embeddings is not None:
            loading = time.monotonic()
            local = plan.classifier
            if not isinstance(executor, LocalExecutor):
                local = dataclasses.replace(local, device="cpu")  # only for the store's metadata
            classifier = get_classifier(local)  # a bad model fails before a store is created
            if embeddings is not None:
                embeddings.start(plan, classifier.clip)
            summary.load_seconds = time.monotonic() - loading
        store = RunStore.open(out, plan.fingerprint(), restart=restart)
        if on_start is not None:
            on_start(executor)
        captions = None
        if plan.captioning_stage:
            captions = _caption_stage(
                plan,
                executor,
                store.captions(),
                store.done("captions"),
                lambda r: store.write(r.batch.index, captions_table(r.chips, r.captions), "captions"),
                progress_mode,
            )
        done = store.done()
        if embeddings is not None:
            done &= store.done(embeddings.part_kind)  # batches stored without their embeddings run again
        summary.resumed_chips = sum(plan.batch(i).stop - plan.batch(i).start for i in done)
        class_names = plan.classifier.class_names
        progress = _classify_all(
            plan,
            executor,
            lambda table, index: store.write(index, table),
            progress_mode,
            skip=done,
            captions=captions,
            initial=summary.resumed_chips,
            on_result=(
                (lambda r: store.write(r.batch.index, embeddings.rows(r), embeddings.part_kind))
                if embeddings is not None
                else None
            ),
        )
        if embeddings is not None:
            embeddings.finish(store, overwrite)
        columns = _output_columns(plan)
        extra = _extra_columns(plan)
        transform, crs = plan.scene.transform, plan.scene.crs
        try:
            with GeoPackageWriter(out, overwrite, plan.describe()) as writer:
                for table in _chunks(store.tables()):
                    _count(summary, table)
                    writer.append(records_to_frame(table, transform, crs, columns, extra))
                    writer.append(failed_to_frame(table, transform, crs), FAILED_LAYER)
                if summary.n_failed and summary.n_failed == plan.n_chips:
                    # Not one chip was read (a corrupt file, a dead link): no output, and no run store,
                    # as there is nothing to resume; a re-run reads the scene again.
                    store.remove()
                    raise unreadable_scene_error(plan.scene.path, summary.first_failure)
                writer.finish(class_names, regions=regions)
        except BaseException:
            if store_out is not None:
                store_out.unlink(missing_ok=True)  # both outputs or neither (the run store keeps the work)
            raise
        store.remove()
    summary.elapsed = time.monotonic() - start
    progress.event("done", output=str(out), failed=summary.n_failed)
    return summary


def _chunks(tables: Iterator[pa.Table], rows: int = 20_000) -> Iterator[pa.Table]:
    """Concatenate batch tables into chunks of about ``rows`` rows (fewer, larger writes; bounded memory)."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        if count >= rows:
            yield pa.concat_tables(pending)
            pending, count = [], 0
    if pending:
        yield pa.concat_tables(pending)


def _count(summary: RunSummary, table: pa.Table) -> None:
    classified = table.column("classified").to_numpy(zero_copy_only=False)
    failed = table.column("failed").to_numpy(zero_copy_only=False)
    summary.n_classified += int(classified.sum())
    summary.n_skipped += int((~classified & ~failed).sum())
    summary.n_failed += int(failed.sum())
    if failed.any() and summary.first_failure is None:
        row = int(failed.argmax())
        summary.first_failure = (
            f"row {table.column('row')[row].as_py()}, col {table.column('col')[row].as_py()}: "
            f"{table.column('error')[row].as_py()}"
        )
    summary.label_counts.update(label for label in table.column("label").to_pylist() if label is not None)


def map_plan(plan: ScenePlan, progress_mode: str = "bar", executor: Executor | None = None) -> gpd.GeoDataFrame:
    """Run a plan and return the labeled chips as a GeoDataFrame (no file written)."""
    tables: dict[int, pa.Table] = {}
    executor = executor or LocalExecutor()
    captions = None
    if plan.captioning_stage:
        captions = _caption_stage(plan, executor, {}, set(), lambda r: None, progress_mode)
    _classify_all(
        plan, executor, lambda table, index: tables.__setitem__(index, table), progress_mode, captions=captions
    )
    table = pa.concat_tables([tables[i] for i in sorted(tables)])
    return records_to_frame(table, plan.scene.transform, plan.scene.crs, _output_columns(plan), _extra_columns(plan))

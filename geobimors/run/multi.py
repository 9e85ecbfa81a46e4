"""Many scenes, one map: plan every scene, classify them in one stream of tasks, write one layer.

scenes (:func:`geobimors.raster.sources.resolve_scenes`) -> one :class:`ScenePlan` per scene
(:func:`plan_scenes`; a scene that cannot be planned is a reported failure, not the end of the
run) -> one stream of tasks over all scenes, each finished batch stored in its scene's run store
``OUTPUT.gpkg.partial/scene-<fingerprint>/`` -> overlap resolution (:mod:`geobimors.vector.overlap`)
-> one GeoPackage in one CRS with ``scene``, ``datetime`` and ``source_crs`` columns.

One scene is the single-scene run of :func:`geobimors.run.pipeline.map_to_file` (same output, same
run store); the helpers here and there are shared (tasks, records, frames, writer).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from rasterio.crs import CRS

from geobimors.errors import GeobimorsError, InputError, RunError
from geobimors.heads.classifier import get_classifier
from geobimors.progress import Progress
from geobimors.raster.scene import SceneInfo
from geobimors.raster.sources import SceneSource, check_output_not_input
from geobimors.run.execute import LocalExecutor
from geobimors.run.pipeline import (
    Executor,
    RunSummary,
    _caption_stage,
    _chunks,
    _count,
    _extra_columns,
    _output_columns,
    _task_error,
    stream_plans,
)
from geobimors.run.plan import MapSettings, ScenePlan, check_output_safety, plan_map, work_estimate
from geobimors.run.store import MANIFEST, RunLock, RunStore, captions_table, result_table, store_path
from geobimors.run.tasks import BatchResult
from geobimors.vector.gpkg import (
    FAILED_LAYER,
    GeoPackageWriter,
    check_output,
    chip_polygons,
    failed_to_frame,
    records_to_frame,
)
from geobimors.vector.overlap import overlap_losers, to_output_crs

#: Non-spatial table of the scenes that could not be mapped (scene, path, reason).
FAILED_SCENES_TABLE = "failed_scenes"
#: Non-spatial table of each scene's finished run-store parts (Parquet, base64) and plan fingerprint:
#: a later run with more scenes (``--overwrite``) restores the scenes it already holds instead of mapping them.
PARTS_TABLE = "scene_parts"
#: The manifest of a multi-scene run store (scene stores are sub-folders, one per scene fingerprint).
_MULTI_KIND = "multi-scene"


@dataclass
class SceneRun:
    """One scene of a multi-scene run and what became of it.

    Attributes:
        source: the scene.
        plan: its plan (``None`` when it could not be planned).
        reason: why it failed (``None`` while it has not).
        summary: its chip counts once the output is written.
        dropped: its chips left out where a chip of another scene maps the same place.
    """

    source: SceneSource
    plan: ScenePlan | None = None
    reason: str | None = None
    summary: RunSummary | None = None
    dropped: int = 0

    @property
    def ok(self) -> bool:
        """Planned and not failed."""
        return self.plan is not None and self.reason is None


@dataclass
class MultiPlan:
    """The scenes of a run, planned, and the output CRS.

    Attributes:
        runs: every scene in order (failed ones included).
        crs: the output CRS (``None``: scenes without a CRS, pixel coordinates).
        crs_note: a one-line note on how the CRS was chosen (EPSG:4326 fallback), or ``None``.
    """

    runs: list[SceneRun]
    crs: CRS | None
    crs_note: str | None = None

    @property
    def planned(self) -> list[SceneRun]:
        """The scenes that were planned (a scene failing later while running stays in this list)."""
        return [run for run in self.runs if run.plan is not None]

    @property
    def first(self) -> ScenePlan:
        """The plan of the first scene that can run (model, labels, head are the same for all)."""
        plan = self.planned[0].plan
        assert plan is not None
        return plan

    @property
    def n_chips(self) -> int:
        """Chips of every scene that can run."""
        return sum(run.plan.n_chips for run in self.planned if run.plan is not None)


def plan_scenes(
    sources: Sequence[SceneSource], settings: MapSettings, crs: str | None = None, fail_fast: bool = False
) -> MultiPlan:
    """Plan every scene with the same settings; a scene that cannot be planned is recorded, not fatal.

    Args:
        sources: the scenes (:func:`~geobimors.raster.sources.resolve_scenes`).
        settings: the run's settings (``scene`` is replaced by each scene's path).
        crs: ``--crs`` (any CRS rasterio reads: ``EPSG:3035``, WKT, PROJ); ``None`` chooses.
        fail_fast: raise the first scene's error instead of going on with the others.

    Raises:
        InputError: ``--crs`` unknown, no scene can be planned (the first one's error), band counts
            that differ without ``--bands``, or scenes with and without a CRS.
    """
    target = parse_crs(crs)
    runs = []
    for source in sources:
        try:
            runs.append(SceneRun(source, plan_map(dataclasses.replace(settings, scene=source.path))))
        except InputError as exc:
            if fail_fast or len(sources) == 1:
                raise
            runs.append(SceneRun(source, reason=exc.message))
    planned = [run.plan for run in runs if run.plan is not None]
    if not planned:
        first = next(run for run in runs if run.reason)
        raise InputError(f"no scene can be mapped; the first, {first.source.name}: {first.reason}")
    check_alike([plan.scene for plan in planned], settings.bands is not None)
    out_crs, note = output_crs(planned, target)
    return MultiPlan(runs, out_crs, note)


def parse_crs(text: str | None) -> CRS | None:
    """The CRS of ``--crs`` (``None`` when not given).

    Raises:
        InputError: not a CRS rasterio knows.
    """
    if text is None:
        return None
    import rasterio
    from rasterio.errors import CRSError

    try:
        with rasterio.Env():  # GDAL's messages go to logging, not stderr
            return CRS.from_user_input(text)
    except CRSError:
        raise InputError(f"--crs {text!r} is not a known CRS; give an EPSG code (EPSG:3035), WKT or PROJ") from None


def check_alike(scenes: Sequence[SceneInfo], bands_given: bool) -> None:
    """Refuse scenes that cannot share one run: band counts that differ (without ``--bands``), CRS and none.

    Raises:
        InputError: with the fix.
    """
    counts = {scene.count for scene in scenes}
    if not bands_given and len(counts) > 1:
        examples = {scene.count: scene.name for scene in scenes}
        listed = ", ".join(f"{name} has {count}" for count, name in sorted(examples.items()))
        raise InputError(
            f"the scenes have different band counts ({listed}); pass --bands R,G,B to use the same bands in every "
            "scene, or map them in separate runs"
        )
    without = [scene.name for scene in scenes if scene.crs is None]
    if without and len(without) < len(scenes):
        raise InputError(
            f"{len(without)} scene(s) have no CRS ({without[0]}, ...) and the others have one: their chips cannot "
            "share a map; assign a CRS to them (gdal_edit.py -a_srs EPSG:XXXX) or map them separately"
        )


def output_crs(plans: Sequence[ScenePlan], target: CRS | None) -> tuple[CRS | None, str | None]:
    """``--crs``, else the scenes' common CRS, else EPSG:4326 with a note."""
    crss = [plan.scene.crs for plan in plans]
    if target is not None:
        if crss[0] is None:
            raise InputError("--crs needs scenes with a CRS; these have none (they are mapped in pixel coordinates)")
        return target, None
    if crss[0] is None or all(crs == crss[0] for crs in crss):
        return crss[0], None
    names = sorted({str(crs.to_string()) for crs in crss if crs is not None})
    return CRS.from_epsg(4326), (
        f"the scenes are in {len(names)} CRSs ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): "
        "the output is in EPSG:4326; pass --crs to choose"
    )


@dataclass
class MultiSummary:
    """What a multi-scene run did: totals (a :class:`RunSummary`) and every scene.

    Attributes:
        total: counts over all scenes (its plan is the first scene's).
        runs: every scene, with its counts or its failure.
        crs_note: how the output CRS was chosen, when it was a fallback.
    """

    total: RunSummary
    runs: list[SceneRun] = field(default_factory=list)
    crs_note: str | None = None

    @property
    def failed_scenes(self) -> list[SceneRun]:
        """Scenes that could not be mapped."""
        return [run for run in self.runs if not run.ok]

    @property
    def n_failed(self) -> int:
        """Chips that could not be read (the exit code is 1 when any, or any scene failed)."""
        return self.total.n_failed

    def lines(self, max_scenes: int = 20) -> list[str]:
        """Human-readable summary lines: totals, every scene (up to ``max_scenes``), labels, output."""
        done = len(self.runs) - len(self.failed_scenes)
        total = [line for line in self.total.lines() if not line.startswith(("grid:", "output:"))]
        split = next((k for k, line in enumerate(total) if line.startswith("labels")), len(total))
        failed = f", {len(self.failed_scenes)} failed" if self.failed_scenes else ""
        total = [
            line.replace("from the interrupted earlier run", "from an earlier run (its store or the existing output)")
            for line in total
        ]
        out = [*total[:split], f"scenes: {done} of {len(self.runs)} mapped{failed}"]
        out += [f"  {run.source.name}: {scene_line(run)}" for run in self.runs[:max_scenes]]
        if len(self.runs) > max_scenes:
            out.append(f"  ... and {len(self.runs) - max_scenes} more (all in the output's metadata)")
        dropped = sum(run.dropped for run in self.runs)
        if dropped:
            out.append(f"overlaps: {dropped} chips left out where another scene maps the place (--keep-overlaps)")
        out += total[split:]
        if self.total.output is not None:
            out.append(f"output: {self.total.output}")
        return out


def scene_line(run: SceneRun) -> str:
    """One scene's counts (or its failure) for the summary and the layer metadata."""
    if run.summary is None:
        return f"failed: {run.reason}"
    s = run.summary
    dropped = f", {run.dropped} left to overlapping scenes" if run.dropped else ""
    failed = f", {s.n_failed} unreadable" if s.n_failed else ""
    return f"{s.n_classified} chips, {s.n_skipped} skipped{failed}{dropped}"


def map_scenes_to_file(
    multi: MultiPlan,
    output: str | os.PathLike[str],
    overwrite: bool = False,
    regions: bool = False,
    restart: bool = False,
    keep_overlaps: bool = False,
    fail_fast: bool = False,
    progress_mode: str = "bar",
    executor: Executor | None = None,
    on_start: Callable[[Executor], None] | None = None,
) -> MultiSummary:
    """Map every scene of ``multi`` into one GeoPackage (resumable per scene and per batch).

    Each scene's finished batches go to its own run store under ``OUTPUT.gpkg.partial/``, named by
    the scene's plan fingerprint: a re-run of the same command (after a crash or ``kill -9``), or of
    a longer list of scenes, maps only what is missing. When every scene that can run has run, the
    chips are written to one layer in ``multi.crs`` and the store is removed; when some scenes
    failed, the store keeps the finished scenes so that a re-run (with ``--overwrite``, since the
    output then exists) maps only the scenes still missing.

    Args:
        multi: the planned scenes.
        output: the ``.gpkg`` to write.
        overwrite: replace an existing output.
        regions: add a ``regions`` layer (same-label chips dissolved across scene borders).
        restart: discard stored unfinished work instead of resuming it.
        keep_overlaps: keep every chip where scenes overlap (default: each place mapped once).
        fail_fast: stop at the first scene that fails.
        progress_mode: ``bar``, ``jsonl`` or ``none``.
        executor: where tasks run (in-process threads by default).
        on_start: called with the executor once the model is loaded.

    Returns:
        The run summary.
    """
    start = time.monotonic()
    out = check_output(output, overwrite)
    check_output_safety(out, multi.first.settings)
    check_output_not_input(out, [run.source for run in multi.runs])
    executor = executor or LocalExecutor()
    summary = MultiSummary(RunSummary(multi.first, output=out), multi.runs, multi.crs_note)
    with RunLock(out):
        loading = time.monotonic()
        if isinstance(executor, LocalExecutor):
            get_classifier(multi.first.classifier)  # once for all scenes; a bad model fails before any store
        summary.total.load_seconds = time.monotonic() - loading
        stores = open_scene_stores(out, multi.planned, restart)
        if overwrite and not restart:
            restore_parts(out, stores)
        if on_start is not None:
            on_start(executor)
        progress = _run_all(multi, stores, executor, progress_mode, fail_fast, summary.total)
        write_output(multi, stores, out, overwrite, regions, keep_overlaps, summary)
        if not summary.failed_scenes:
            shutil.rmtree(store_path(out), ignore_errors=True)
    summary.total.elapsed = time.monotonic() - start
    progress.event("done", output=str(out), failed=summary.n_failed, failed_scenes=len(summary.failed_scenes))
    return summary


def open_scene_stores(output: Path, runs: Sequence[SceneRun], restart: bool) -> dict[int, RunStore]:
    """One run store per scene under ``OUTPUT.partial/``, keyed by the scene's index in ``runs``.

    Raises:
        InputError: the folder holds an unfinished single-scene run of this output (without ``restart``).
    """
    root = store_path(output)
    if restart and root.exists():
        shutil.rmtree(root)
    manifest = root / MANIFEST
    if manifest.is_file() and _MULTI_KIND not in manifest.read_text(errors="replace")[:200]:
        raise InputError(
            f"{root} holds an unfinished single-scene run; re-run with --restart to discard it, or choose another "
            "output"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"kind": _MULTI_KIND}))
    os.replace(tmp, manifest)
    stores = {}
    for index, run in enumerate(runs):
        assert run.plan is not None
        fingerprint = run.plan.fingerprint()
        stores[index] = RunStore.open_directory(root / f"scene-{fingerprint}", fingerprint)
    return stores


def _run_all(
    multi: MultiPlan,
    stores: dict[int, RunStore],
    executor: Executor,
    progress_mode: str,
    fail_fast: bool,
    total: RunSummary,
) -> Progress:
    """Caption (heads that read captions) and classify every scene in one stream of tasks."""
    runs = multi.planned
    captions = {i: _captions(run, stores[i], executor, progress_mode, fail_fast) for i, run in enumerate(runs)}
    done = {i: stores[i].done() for i in range(len(runs))}
    sizes = {i: (run.plan.n_batches if run.plan else 0) for i, run in enumerate(runs)}
    total.resumed_chips = sum(_chips_in(run.plan, done[i]) for i, run in enumerate(runs) if run.plan)
    finished = {i for i in done if len(done[i]) == sizes[i]}
    fields = {"scenes_done": len(finished), "scenes_total": len(multi.runs)}
    progress = Progress(multi.n_chips, progress_mode, initial=total.resumed_chips, fields=fields)
    progress.set_fields(**fields)
    plans = [run.plan for run in runs if run.plan is not None]
    skips = [done[i] for i in range(len(runs))]
    stream = stream_plans(plans, skips, executor, [captions[i] for i in range(len(runs))],
                          stopped=lambda i: runs[i].reason is not None)  # fmt: skip
    try:
        for i, outcome in stream:
            run = runs[i]
            assert run.plan is not None
            if outcome.error is not None:
                _fail(run, _task_error(run.plan, outcome, 2), fail_fast)
                continue
            result: BatchResult = outcome.result
            stores[i].write(result.batch.index, result_table(result, run.plan.classifier.class_names, run.plan.top_k))
            done[i].add(result.batch.index)
            progress.update(len(result.rows))
            if len(done[i]) == sizes[i]:
                finished.add(i)
                progress.set_fields(scenes_done=len(finished), scenes_total=len(multi.runs))
                progress.event("scene", scene=run.source.name)
    finally:
        stream.close()  # cancels the tasks not yet started (an error, --fail-fast, Ctrl-C)
        progress.close()
    return progress


def _chips_in(plan: ScenePlan, batches: set[int]) -> int:
    return sum(plan.batch(i).stop - plan.batch(i).start for i in batches)


def _captions(
    run: SceneRun, store: RunStore, executor: Executor, progress_mode: str, fail_fast: bool
) -> dict[int, str] | None:
    plan = run.plan
    if plan is None or not plan.captioning_stage:
        return None
    try:
        return _caption_stage(
            plan,
            executor,
            store.captions(),
            store.done("captions"),
            lambda r: store.write(r.batch.index, captions_table(r.chips, r.captions), "captions"),
            progress_mode,
        )
    except GeobimorsError as exc:
        _fail(run, exc, fail_fast)
        return None


def _fail(run: SceneRun, error: GeobimorsError, fail_fast: bool) -> None:
    if fail_fast:
        raise error
    if run.reason is None:
        run.reason = error.message


def write_output(
    multi: MultiPlan,
    stores: dict[int, RunStore],
    out: Path,
    overwrite: bool,
    regions: bool,
    keep_overlaps: bool,
    summary: MultiSummary,
) -> None:
    """Write the chips of every scene that ran to one GeoPackage (temporary file, then renamed)."""
    runs = _count_scenes([(i, run) for i, run in enumerate(multi.planned) if run.ok], stores, summary.total)
    if not runs:
        first = summary.failed_scenes[0]
        raise RunError(f"every scene failed; the first, {first.source.name}: {first.reason}")
    losers = {} if keep_overlaps else _losers(runs, stores, multi.crs)
    for i, run in runs:
        run.dropped = len(losers.get(i, ()))
        summary.total.n_classified -= run.dropped
    with GeoPackageWriter(out, overwrite, _metadata(multi, keep_overlaps)) as writer:
        for i, run in runs:
            for table in _chunks(stores[i].tables()):
                chips, failed = _scene_frames(run, table, multi, losers.get(i))
                summary.total.label_counts.update(chips["label"].dropna())
                writer.append(chips)
                writer.append(failed, FAILED_LAYER)
        writer.write_table(failed_scenes_frame(summary.failed_scenes), FAILED_SCENES_TABLE)
        for i, _ in runs:
            writer.write_table(parts_frame(stores[i]), PARTS_TABLE)
        writer.finish(multi.first.classifier.class_names, regions=regions)


def _count_scenes(
    runs: Sequence[tuple[int, SceneRun]], stores: dict[int, RunStore], total: RunSummary
) -> list[tuple[int, SceneRun]]:
    """Count chips classified, skipped and unreadable per scene (``run.summary``) and in all (``total``).

    A scene none of whose chips could be read (its file vanished, a dead URL) fails: its store is
    removed so that a re-run reads it again. Returns the scenes that go into the output.
    """
    columns = ["row", "col", "classified", "failed", "error", "label"]
    kept = []
    for i, run in runs:
        assert run.plan is not None
        run.summary = RunSummary(run.plan)
        for table in stores[i].tables(columns=columns):
            _count(run.summary, table)
        if run.summary.n_failed == run.plan.n_chips:
            run.reason = f"no chip could be read (first: {run.summary.first_failure})"
            run.summary = None
            stores[i].remove()
            continue
        kept.append((i, run))
        total.n_classified += run.summary.n_classified
        total.n_skipped += run.summary.n_skipped
        total.n_failed += run.summary.n_failed
        if total.first_failure is None and run.summary.first_failure is not None:
            total.first_failure = f"scene {run.source.name} {run.summary.first_failure}"
    return kept


def parts_frame(store: RunStore) -> pd.DataFrame:
    """The ``scene_parts`` rows of one scene: fingerprint, kind, index and the part's Parquet bytes (base64)."""
    rows = [
        (store.fingerprint, kind, index, base64.b64encode(store.part_path(index, kind).read_bytes()).decode())
        for kind in ("batch", "captions")
        for index in sorted(store.done(kind))
    ]
    return pd.DataFrame(rows, columns=["fingerprint", "kind", "part", "data"]).astype(
        {"fingerprint": object, "kind": object, "part": np.int64, "data": object}
    )


def restore_parts(output: Path, stores: dict[int, RunStore]) -> None:
    """Restore the parts of scenes an existing output already holds (same fingerprint) into empty stores."""
    import pyogrio

    if not output.is_file():
        return
    try:
        if PARTS_TABLE not in pyogrio.list_layers(output)[:, 0]:
            return
    except Exception:  # not a GeoPackage we can read: nothing to restore (it will be replaced)
        return
    for store in stores.values():
        if store.done() or store.done("captions"):
            continue
        rows = pyogrio.read_dataframe(output, layer=PARTS_TABLE, where=f"fingerprint = '{store.fingerprint}'")
        for kind, index, data in zip(rows["kind"], rows["part"], rows["data"]):
            store.write_bytes(int(index), base64.b64decode(data), str(kind))


def _losers(runs: Sequence[tuple[int, SceneRun]], stores: dict[int, RunStore], crs: CRS | None) -> dict[int, set[int]]:
    """Per scene, the grid ids (row * n_cols + col) of chips another scene maps instead."""
    columns = ["row", "col", "col_off", "row_off", "width", "height", "valid_fraction", "classified"]
    frames = []
    for i, run in _overlapping(runs, crs):
        assert run.plan is not None
        for table in stores[i].tables(columns=columns):
            frame = records_to_frame(table, run.plan.scene.transform, run.plan.scene.crs, [], {})
            frame = to_output_crs(frame, crs)
            frame["scene_index"] = i
            frame["chip"] = frame["row"].to_numpy(np.int64) * run.plan.grid.n_cols + frame["col"].to_numpy(np.int64)
            frames.append(frame[["scene_index", "chip", "valid_fraction", "geometry"]])
    if not frames:
        return {}
    everything = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry")
    lost = overlap_losers(everything)
    out: dict[int, set[int]] = {}
    for scene, chip in zip(everything["scene_index"].to_numpy()[lost], everything["chip"].to_numpy()[lost]):
        out.setdefault(int(scene), set()).add(int(chip))
    return out


def _overlapping(runs: Sequence[tuple[int, SceneRun]], crs: CRS | None) -> list[tuple[int, SceneRun]]:
    """The scenes whose footprint meets another scene's (only their chips can compete)."""
    footprints = []
    for _, run in runs:
        assert run.plan is not None
        scene = run.plan.scene
        polygon = chip_polygons(scene.transform, np.array([[0, 0, scene.width, scene.height]]))
        footprints.append(to_output_crs(gpd.GeoDataFrame(geometry=polygon, crs=scene.crs), crs).geometry.iloc[0])
    inside, other = shapely.STRtree(footprints).query(footprints, predicate="intersects")
    meeting = set(inside[inside != other].tolist())
    return [pair for k, pair in enumerate(runs) if k in meeting]


def _scene_frames(
    run: SceneRun, table: pa.Table, multi: MultiPlan, losers: set[int] | None
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """The chips (without those another scene maps) and unreadable chips of one part, in the output CRS."""
    plan = run.plan
    assert plan is not None
    transform, scene_crs = plan.scene.transform, plan.scene.crs
    chips = records_to_frame(table, transform, scene_crs, _output_columns(plan), _extra_columns(plan))
    if losers:
        ids = chips["row"].to_numpy(np.int64) * plan.grid.n_cols + chips["col"].to_numpy(np.int64)
        chips = chips[~np.isin(ids, np.fromiter(losers, np.int64))].reset_index(drop=True)
    failed = failed_to_frame(table, transform, scene_crs)
    dated = any(r.source.datetime is not None for r in multi.runs)  # one schema for every scene
    return (
        _with_scene(to_output_crs(chips, multi.crs), run, dated),
        _with_scene(to_output_crs(failed, multi.crs), run, dated),
    )


def _with_scene(frame: gpd.GeoDataFrame, run: SceneRun, dated: bool) -> gpd.GeoDataFrame:
    """Add the ``scene``, ``datetime`` (when any scene has one; empty for those without) and ``source_crs``."""
    assert run.plan is not None
    n = len(frame)
    frame["scene"] = pd.Series([run.source.name] * n, dtype=object)
    if dated:
        frame["datetime"] = pd.to_datetime(pd.Series([run.source.datetime] * n, dtype=object), utc=True)
    scene_crs = run.plan.scene.crs
    frame["source_crs"] = pd.Series([scene_crs.to_string() if scene_crs else None] * n, dtype=object)
    return frame


def _metadata(multi: MultiPlan, keep_overlaps: bool) -> dict[str, str]:
    """Layer metadata: the first plan's facts, with every scene and its counts instead of one scene."""
    meta = multi.first.describe()
    meta.pop("scene", None)
    meta.pop("grid", None)
    done = sum(1 for run in multi.runs if run.ok)
    meta["scenes_done"] = f"{done}/{len(multi.runs)}"
    meta["scenes"] = json.dumps(
        [{"scene": run.source.name, "path": run.source.path, "result": scene_line(run)} for run in multi.runs]
    )
    meta["crs"] = multi.crs.to_string() if multi.crs is not None else "none (pixel coordinates)"
    meta["overlaps"] = "kept" if keep_overlaps else "each place once (most valid pixels wins)"
    return meta


def failed_scenes_frame(runs: Sequence[SceneRun]) -> pd.DataFrame:
    """The ``failed_scenes`` table: scene name, path and reason."""
    return pd.DataFrame(
        {
            "scene": pd.Series([run.source.name for run in runs], dtype=object),
            "path": pd.Series([run.source.path for run in runs], dtype=object),
            "reason": pd.Series([run.reason for run in runs], dtype=object),
        }
    )


def describe_work(multi: MultiPlan) -> str:
    """One line on the work of all scenes, printed before the run starts."""
    planned = multi.planned
    if len(planned) == 1 and planned[0].plan is not None:
        return work_estimate(planned[0].plan)
    batches = sum(run.plan.n_batches for run in planned if run.plan is not None)
    failed = len(multi.runs) - len(planned)
    refused = f" ({failed} refused, see the summary)" if failed else ""
    return f"{multi.n_chips:,} chips in {batches:,} batches from {len(planned)} scenes{refused}"


__all__ = [
    "FAILED_SCENES_TABLE",
    "MultiPlan",
    "MultiSummary",
    "SceneRun",
    "map_scenes_to_file",
    "output_crs",
    "parse_crs",
    "plan_scenes",
]

"""Embedding a scene: the only step that reads pixels; everything else answers from the store.

scene -> plan (the same chip grid as ``map``) -> Dask tasks that read their
windows and return pooled image embeddings (and captions) -> per-batch parts in
the resumable run store (``OUTPUT.partial/``) -> one GeoParquet store, streamed
part by part into a temporary file and renamed into place. Re-running the same
command after a crash or ``kill -9`` skips the stored batches and writes an
identical file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from geobimors.embeddings.store import (
    StoreMeta,
    StoreWriter,
    check_store_output,
    chips_table,
    make_meta,
    tables_bbox,
)
from geobimors.errors import GeobimorsError, RunError, check_at_least_one, warn
from geobimors.models.captions import CaptionerSpec, load_captioner
from geobimors.models.clip import ClipModel, check_tta, load_model
from geobimors.progress import Progress
from geobimors.raster.identity import scene_identity
from geobimors.raster.read import ChipReader, ReadSpec, unreadable_scene_error
from geobimors.raster.scene import SceneInfo
from geobimors.run.execute import DistributedExecutor, LocalExecutor, Outcome
from geobimors.run.plan import DEFAULT_MODEL, Batch, MapSettings, default_gsd, plan_reading
from geobimors.run.store import RunLock, RunStore

Executor = LocalExecutor | DistributedExecutor
PART_KIND = "embeddings"
EMBEDDING_PARTS = PART_KIND


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything a task needs to build the embedder: small, hashable, picklable.

    Attributes:
        model: model name (see :mod:`geobimors.models.clip`).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        captioner: captioner of the chips (``None``: no captions).
        caption_encoder: text encoder of the captions (``None``: captions only, no caption embeddings).
        tta: test-time augmentation views (1, 2, 4 or 8; :meth:`ClipModel.with_tta`).
    """

    model: str
    device: str = "auto"
    precision: str = "fp32"
    captioner: CaptionerSpec | None = None
    caption_encoder: str | None = None
    tta: int = 1


class Embedder:
    """Pooled image embeddings (and captions, caption embeddings) of uint8 chips; one forward pass at a time."""

    def __init__(self, spec: EmbedderSpec) -> None:
        self.spec = spec
        self.clip: ClipModel = load_model(spec.model, spec.device, spec.precision, spec.tta)
        self.encoder: Any = None
        if spec.captioner is not None and spec.caption_encoder is not None:
            from geobimors.models.caption_encoder import load_caption_encoder

            self.encoder = load_caption_encoder(spec.caption_encoder, self.clip.device)
        # Loaded now, so that a captioner that cannot load fails before any work is stored.
        self.captioner = load_captioner(spec.captioner, spec.device, spec.precision) if spec.captioner else None
        self._lock = threading.Lock()

    def embed(self, chips: np.ndarray) -> tuple[np.ndarray, list[str] | None, np.ndarray | None]:
        """Embeddings (N, E) float32, captions and caption embeddings (N, Dc) of (N, H, W, 3) uint8 chips."""
        with self._lock, torch.no_grad():
            features = self.clip.encode_images(self.clip.preprocess(chips)).float().cpu().numpy()
            captions = None
            caption_features = None
            if self.captioner is not None:
                captions = self.captioner.caption(chips) if len(chips) else []
                if self.encoder is not None:
                    caption_features = self.encoder.encode(captions).float().cpu().numpy().reshape(len(chips), -1)
            return features, captions, caption_features


_EMBEDDERS: dict[EmbedderSpec, Embedder] = {}
_LOCK = threading.Lock()


def get_embedder(spec: EmbedderSpec) -> Embedder:
    """The process-wide embedder for ``spec`` (built on first use)."""
    with _LOCK:
        embedder = _EMBEDDERS.get(spec)
        if embedder is None:
            embedder = _EMBEDDERS[spec] = Embedder(spec)
        return embedder


@dataclass
class EmbedResult:
    """What a task returns for its batch.

    Attributes:
        batch: the batch.
        rows: (N,) grid rows of every chip of the batch.
        cols: (N,) grid columns.
        windows: (N, 4) footprint windows: col_off, row_off, width, height.
        valid_fraction: (N,) valid-pixel fraction per chip.
        keep: (N,) True for chips with enough valid pixels (the embedded ones).
        embeddings: (M, E) embeddings of the kept chips.
        captions: M captions (with a captioner).
        caption_embeddings: (M, Dc) caption embeddings (with a caption encoder).
        errors: (N) read error per chip, or ``None`` when every window was read.
    """

    batch: Batch
    rows: np.ndarray
    cols: np.ndarray
    windows: np.ndarray
    valid_fraction: np.ndarray
    keep: np.ndarray
    embeddings: np.ndarray
    captions: list[str] | None = None
    caption_embeddings: np.ndarray | None = None
    errors: list[str | None] | None = None

    @property
    def n_failed(self) -> int:
        """Chips whose window could not be read."""
        return 0 if self.errors is None else sum(e is not None for e in self.errors)


def embed_batch(read: ReadSpec, spec: EmbedderSpec, batch: Batch) -> EmbedResult:
    """Read a batch of chips and embed the valid ones (a Dask task)."""
    chips = batch.chips(read.grid)
    pixels = ChipReader(read).read_batch(chips)
    features, captions, caption_features = get_embedder(spec).embed(pixels.pixels[pixels.keep])
    return EmbedResult(
        batch=batch,
        rows=np.array([c.row for c in chips], dtype=np.int32),
        cols=np.array([c.col for c in chips], dtype=np.int32),
        windows=read.grid.footprint_windows(chips),
        valid_fraction=pixels.valid_fraction,
        keep=pixels.keep,
        embeddings=features,
        captions=captions,
        caption_embeddings=caption_features,
        errors=pixels.errors if any(e is not None for e in pixels.errors) else None,
    )


def result_rows(meta: StoreMeta, result: EmbedResult) -> pa.Table:
    """Store rows of a batch result (its valid chips)."""
    keep = result.keep
    return chips_table(
        meta,
        result.rows[keep],
        result.cols[keep],
        result.windows[keep],
        result.valid_fraction[keep],
        result.embeddings.reshape(-1, meta.embedding_dim),
        captions=result.captions if meta.has_captions else None,
        caption_embeddings=result.caption_embeddings if meta.caption_dim is not None else None,
    )


@dataclass
class EmbedPlan:
    """A validated embedding run: the scene, its chip grid, how to read chips, the embedder.

    Attributes:
        settings: the chip and run options (``labels`` unused).
        read: how tasks read chips (scene, grid, bands, scaling, nodata).
        embedder: how tasks build the embedder.
        dtype: ``float16`` or ``float32`` embeddings in the file.
        band_description: which bands make the RGB chips.
        scene: the scene description.
    """

    settings: MapSettings
    read: ReadSpec
    embedder: EmbedderSpec
    dtype: str = "float16"
    band_description: str = ""
    scene: SceneInfo | None = None

    @property
    def n_chips(self) -> int:
        """Chips in the grid."""
        return len(self.read.grid)

    @property
    def n_batches(self) -> int:
        """Number of tasks."""
        return -(-self.n_chips // self.settings.batch_size)

    def batch(self, index: int) -> Batch:
        """The ``index``-th batch, row-major."""
        start = index * self.settings.batch_size
        return Batch(index, start, min(start + self.settings.batch_size, self.n_chips))

    def fingerprint(self) -> str:
        """Hash of everything that determines the stored rows (resume refuses a different one).

        The file's dtype is not part of it: parts hold float32 and are cast when the file is written.
        A local scene also counts by the size and modification time of its files
        (:func:`geobimors.raster.identity.scene_identity`): a rewritten scene is not resumed into.
        """
        read, grid = self.read, self.read.grid
        payload = {
            "kind": "embed",
            "scene": read.path,
            "transform": list(grid.transform)[:6],
            "grid": [grid.width, grid.height, grid.chip_width, grid.chip_height, grid.stride_x, grid.stride_y],
            "out": [grid.out_width, grid.out_height],
            "bands": list(read.bands),
            "scale": asdict(read.scale) if read.scale else None,
            "nodata": read.nodata,
            "min_valid": read.min_valid,
            "batch_size": self.settings.batch_size,
            # tta only when set: plans without it keep their fingerprints (and resume)
            "embedder": {k: v for k, v in asdict(self.embedder).items() if k != "tta" or v != 1},
        }
        identity = scene_identity(read.path)
        if identity is not None:  # a rewritten local scene file is another run; URLs have none (fingerprint as before)
            payload["scene_file"] = identity
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def plan_embed(
    settings: MapSettings,
    dtype: str = "float16",
    captioner: CaptionerSpec | None = None,
    caption_encoder: str | None = "minilm",
) -> EmbedPlan:
    """Validate the options against the scene and plan the batches (no model loaded yet).

    Args:
        settings: scene, model and chip options (as for ``map``; labels are not used).
        dtype: ``float16`` (default) or ``float32``.
        captioner: store each chip's caption made by this captioner.
        caption_encoder: also store the caption embeddings of this encoder (``None``: captions only).

    Raises:
        InputError: for bad scenes, options or dtype.
    """
    from geobimors.embeddings.store import DTYPES
    from geobimors.errors import InputError

    if dtype not in DTYPES:
        raise InputError(f"--dtype must be float16 or float32, got {dtype!r}")
    check_at_least_one(settings.batch_size, "--batch-size")
    if captioner is not None and captioner.is_none:
        captioner = None
    model = settings.model or DEFAULT_MODEL
    scene, _, read, bands = plan_reading(settings, model)
    gsd = resolved_gsd(settings, scene, model)
    spec = EmbedderSpec(
        model,
        settings.device,
        settings.precision,
        captioner,
        caption_encoder if captioner is not None else None,
        check_tta(settings.tta),
    )
    return EmbedPlan(replace(settings, model=model, gsd=gsd), read, spec, dtype, bands, scene)


def embedding_dim(clip: ClipModel) -> int:
    """Width of a model's pooled image embedding."""
    probe = torch.zeros((1, 3, *clip.image_size), device=clip.device)
    return int(clip.encode_images(probe).shape[-1])


def normalisation(clip: ClipModel) -> dict[str, list[float]]:
    """A model's image mean and std."""
    return {"mean": clip._mean.flatten().tolist(), "std": clip._std.flatten().tolist()}


def resolved_gsd(settings: MapSettings, scene: SceneInfo, model: str) -> float | None:
    """The ground resolution chips were resampled to (as ``plan_reading`` decides), ``None``: the scene's."""
    if settings.gsd is None and not settings.keep_scene_gsd:
        return default_gsd(scene, model, quiet=True)
    return settings.gsd


def embed_meta(plan: EmbedPlan, embedder: Embedder, dtype: str = "float32") -> StoreMeta:
    """Store metadata of a plan with its loaded embedder."""
    return make_meta(
        plan.read,
        plan.embedder.model,
        embedder.clip.fingerprint,
        embedding_dim(embedder.clip),
        normalisation(embedder.clip),
        dtype=dtype,
        gsd=plan.settings.gsd,
        precision=plan.embedder.precision,
        captioner=plan.embedder.captioner.name if plan.embedder.captioner is not None else None,
        caption_model=plan.embedder.caption_encoder if embedder.encoder is not None else None,
        caption_dim=int(embedder.encoder.dim) if embedder.encoder is not None else None,
        tta=plan.embedder.tta,
    )


@dataclass
class EmbedSummary:
    """What an embedding run did.

    Attributes:
        output: the store written.
        n_chips: chips in the grid.
        n_embedded: chips stored.
        n_failed: chips whose window could not be read (not stored).
        resumed_chips: chips taken from an interrupted earlier run.
        elapsed: seconds from start to end.
        load_seconds: of which loading the model.
        first_failure: where and why the first unreadable chip failed.
    """

    output: Path
    n_chips: int = 0
    n_embedded: int = 0
    n_failed: int = 0
    resumed_chips: int = 0
    elapsed: float = 0.0
    load_seconds: float = 0.0
    first_failure: str | None = None

    @property
    def n_skipped(self) -> int:
        """Chips skipped as mostly nodata."""
        return self.n_chips - self.n_embedded - self.n_failed

    def lines(self, meta: StoreMeta | None = None) -> list[str]:
        """Human-readable summary lines."""
        failed = f", {self.n_failed} failed (unreadable)" if self.n_failed else ""
        out = [f"chips: {self.n_embedded} embedded, {self.n_skipped} skipped (mostly nodata){failed} of {self.n_chips}"]
        processed = self.n_chips - self.resumed_chips
        seconds = self.elapsed - self.load_seconds
        if processed > 0 and seconds > 0:
            out.append(
                f"time: {self.elapsed:.1f} s (model loading {self.load_seconds:.1f} s), "
                f"{processed / seconds:.1f} chips/s"
            )
        if self.resumed_chips:
            out.append(f"resumed: {self.resumed_chips} chips came from the interrupted earlier run")
        if meta is not None:
            out.append(f"store: {meta.describe()}")
        if self.output.exists():
            size = self.output.stat().st_size
            per_chip = f", {size / self.n_embedded:.0f} bytes per chip" if self.n_embedded else ""
            out.append(f"output: {self.output} ({size / 1e6:.1f} MB{per_chip})")
        return out


def embed_to_file(
    plan: EmbedPlan,
    output: str | os.PathLike[str],
    overwrite: bool = False,
    restart: bool = False,
    progress_mode: str = "bar",
    executor: Executor | None = None,
    progress: Progress | None = None,
    extra: dict[str, Any] | None = None,
) -> EmbedSummary:
    """Embed every valid chip of a plan into a GeoParquet store.

    Finished batches go to the run store beside the output as they arrive
    (memory stays flat); an interrupted run resumes from it. The store file is
    written to a temporary file and renamed into place; a lock keeps a second
    run from writing the same output.

    Args:
        plan: the validated plan.
        output: the ``.parquet`` file to write.
        overwrite: replace an existing file.
        restart: discard an interrupted earlier run instead of resuming it.
        progress_mode: ``bar``, ``jsonl`` or ``none``.
        executor: where tasks run (in-process Dask by default).
        progress: count chips on this progress (several scenes, one bar) instead of a new one.
        extra: added to the store metadata's ``extra`` (e.g. the scene name and datetime).

    Returns:
        The run summary.
    """
    start = time.monotonic()
    out = check_store_output(output, overwrite)
    summary = EmbedSummary(out, n_chips=plan.n_chips)
    executor = executor or LocalExecutor()
    with RunLock(out):
        loading = time.monotonic()
        # Loaded here in every case: the metadata needs the weights fingerprint and widths,
        # and a bad model fails before a run store is created.
        local_spec = plan.embedder if isinstance(executor, LocalExecutor) else replace(plan.embedder, device="cpu")
        embedder = get_embedder(local_spec)
        meta = embed_meta(plan, embedder)
        if extra:
            meta = replace(meta, extra={**meta.extra, **extra})
        summary.load_seconds = time.monotonic() - loading
        store = RunStore.open(out, plan.fingerprint(), restart=restart)
        done = store.done(PART_KIND)
        summary.resumed_chips = sum(plan.batch(i).stop - plan.batch(i).start for i in done)
        shared = progress is not None
        if progress is None:
            progress = Progress(plan.n_chips, progress_mode, desc="embed", initial=summary.resumed_chips)
        else:
            progress.update(summary.resumed_chips)
        tasks = ((plan.read, plan.embedder, plan.batch(i)) for i in range(plan.n_batches) if i not in done)
        try:
            for outcome in executor.map(embed_batch, tasks):
                if outcome.error is not None:
                    raise _task_error(plan, outcome)
                result: EmbedResult = outcome.result
                store.write(result.batch.index, result_rows(meta, result), PART_KIND)
                _note_failures(summary, result)
                progress.update(len(result.rows))
        except GeobimorsError:
            if not store.done(PART_KIND):
                store.remove()  # nothing to resume: leave nothing behind
            raise
        finally:
            if not shared:
                progress.close()
        if summary.n_failed and summary.n_failed == plan.n_chips:
            store.remove()  # nothing was read: no store, and a re-run reads the scene again
            raise unreadable_scene_error(plan.settings.scene, summary.first_failure)
        summary.n_embedded = assemble_store(store, out, replace(meta, dtype=plan.dtype), overwrite)
        store.remove()
    summary.elapsed = time.monotonic() - start
    if summary.n_embedded == 0:
        warn("no chip had enough valid pixels, so the store is empty; check the scene's nodata and --min-valid")
    if not shared:
        progress.event("done", output=str(out), failed=summary.n_failed)
    return summary


def assemble_store(store: RunStore, output: Path, meta: StoreMeta, overwrite: bool, kind: str = PART_KIND) -> int:
    """Stream the stored parts, in batch order, into the GeoParquet file; returns its row count."""
    bbox = tables_bbox(_part_columns(store, kind, ["bbox"]))
    with StoreWriter(output, meta, bbox=bbox, overwrite=overwrite) as writer:
        for table in store.tables(kind):
            writer.write(table)
        writer.close()
        return writer.n_rows


def _part_columns(store: RunStore, kind: str, columns: list[str]) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    for index in sorted(store.done(kind)):
        yield pq.read_table(store.part_path(index, kind), columns=columns)


def _note_failures(summary: EmbedSummary, result: EmbedResult) -> None:
    if not result.n_failed or result.errors is None:
        return
    summary.n_failed += result.n_failed
    if summary.first_failure is None:
        i = next(i for i, e in enumerate(result.errors) if e is not None)
        summary.first_failure = f"row {result.rows[i]}, col {result.cols[i]}: {result.errors[i]}"


def _task_error(plan: EmbedPlan, outcome: Outcome) -> GeobimorsError:
    error = outcome.error
    if isinstance(error, GeobimorsError):
        return error
    batch = outcome.args[2]
    first = next(plan.read.grid.chips(batch.start, batch.start + 1))
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RunError(
        f"batch {batch.index} failed at chip row {first.row}, col {first.col} "
        f"(window col_off={first.col_off}, row_off={first.row_off}): {type(error).__name__}: {text}"
    )


@dataclass
class EmbeddingsRequest:
    """``map --embeddings``: write the store as a by-product of the map pass.

    The map pipeline drives it through :class:`geobimors.run.byproduct.ByProduct`.

    Attributes:
        path: the ``.parquet`` store to write.
        dtype: ``float16`` or ``float32``.
    """

    path: Path
    dtype: str = "float16"
    part_kind: str = EMBEDDING_PARTS
    _meta: StoreMeta | None = field(default=None, init=False, repr=False)

    def check(self, overwrite: bool) -> Path:
        """Fail before any work if the store cannot be written at :attr:`path`."""
        return check_store_output(self.path, overwrite)

    def start(self, plan: Any, clip: ClipModel) -> None:
        """Take the store's metadata from the plan and the loaded model."""
        self._meta = map_store_meta(plan, clip)

    def rows(self, result: Any) -> pa.Table:
        """Store rows (float32 parts) of a map task's :class:`~geobimors.run.tasks.BatchResult`."""
        return batch_rows(self._started(), result)

    def finish(self, store: RunStore, overwrite: bool) -> None:
        """Write the store, whole, from the parts kept in the map run's store."""
        assemble_store(store, self.path, replace(self._started(), dtype=self.dtype), overwrite)

    def _started(self) -> StoreMeta:
        if self._meta is None:
            raise RuntimeError("EmbeddingsRequest.start() was not called")  # a pipeline bug, not an input error
        return self._meta


def map_store_meta(plan: Any, clip: ClipModel) -> StoreMeta:
    """Store metadata (float32 parts) for the chips of a map plan (:class:`~geobimors.run.plan.ScenePlan`)."""
    return make_meta(
        plan.read,
        plan.classifier.model,
        clip.fingerprint,
        embedding_dim(clip),
        normalisation(clip),
        dtype="float32",
        gsd=resolved_gsd(plan.settings, plan.scene, plan.classifier.model),
        precision=plan.settings.precision,
        captioner=plan.captioner.name if plan.captioner is not None else None,
        tta=plan.classifier.tta,
    )


def batch_rows(meta: StoreMeta, result: Any) -> pa.Table:
    """Store rows of a map task's :class:`~geobimors.run.tasks.BatchResult` (its classified chips)."""
    keep = result.classified
    embeddings = result.embeddings if result.embeddings is not None else np.zeros((0, meta.embedding_dim))
    return chips_table(
        meta,
        result.rows[keep],
        result.cols[keep],
        result.windows[keep],
        result.valid_fraction[keep],
        embeddings.reshape(-1, meta.embedding_dim),
        captions=result.captions if meta.has_captions else None,
    )

"""Embedding several scenes: a partitioned GeoParquet dataset, one store file per scene.

``geobimors embed A.tif B.tif -o region.parquet/`` writes ``region.parquet/A.parquet`` and
``region.parquet/B.parquet``: each file is a complete store of its own (the format of
:mod:`geobimors.embeddings.store`, written by :func:`~geobimors.embeddings.embed.embed_to_file`),
all made with the same model and chip options; the directory holds nothing else once the run is
done. Each file records its scene's name, datetime and plan fingerprint in the metadata's
``extra`` (``scene_name``, ``datetime``, ``run_fingerprint``): a re-run of the same command, or of a
longer list of scenes, keeps the files whose fingerprint matches and embeds only the others;
an interrupted scene resumes from its own ``NAME.parquet.partial/`` store.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geobimors.embeddings.embed import EmbedPlan, EmbedSummary, Executor, embed_to_file, plan_embed
from geobimors.embeddings.store import open_store
from geobimors.errors import GeobimorsError, InputError, OutputError
from geobimors.models.captions import CaptionerSpec
from geobimors.progress import Progress
from geobimors.raster.sources import SceneSource, check_output_not_input
from geobimors.run.execute import LocalExecutor
from geobimors.run.multi import check_alike
from geobimors.run.plan import MapSettings


@dataclass
class SceneEmbed:
    """One scene of a multi-scene embedding run.

    Attributes:
        source: the scene.
        path: its store file in the output directory.
        plan: its plan (``None`` when it could not be planned).
        reason: why it failed, if it did.
        summary: its run summary once embedded.
        kept: its file was already complete with the same settings (not embedded again).
    """

    source: SceneSource
    path: Path
    plan: EmbedPlan | None = None
    reason: str | None = None
    summary: EmbedSummary | None = None
    kept: bool = False


@dataclass
class DatasetSummary:
    """What a multi-scene embedding run did.

    Attributes:
        directory: the dataset directory.
        scenes: every scene and what became of it.
        elapsed: seconds from start to end.
    """

    directory: Path
    scenes: list[SceneEmbed] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def failed_scenes(self) -> list[SceneEmbed]:
        """Scenes that could not be embedded."""
        return [scene for scene in self.scenes if scene.reason is not None]

    @property
    def n_failed(self) -> int:
        """Unreadable chips over all scenes."""
        return sum(s.summary.n_failed for s in self.scenes if s.summary is not None)

    def lines(self) -> list[str]:
        """Human-readable summary lines: one per scene, then the totals."""
        out = []
        for scene in self.scenes:
            if scene.reason is not None:
                out.append(f"  {scene.source.name}: failed: {scene.reason}")
            elif scene.kept:
                out.append(f"  {scene.source.name}: kept (already embedded with these settings)")
            elif scene.summary is not None:
                s = scene.summary
                out.append(f"  {scene.source.name}: {s.n_embedded} chips embedded, {s.n_skipped} skipped")
        done = len(self.scenes) - len(self.failed_scenes)
        failed = f", {len(self.failed_scenes)} failed" if self.failed_scenes else ""
        embedded = sum(s.summary.n_embedded for s in self.scenes if s.summary is not None)
        return [
            f"scenes: {done} of {len(self.scenes)} embedded{failed}",
            *out,
            f"chips: {embedded} embedded in this run, in {self.elapsed:.1f} s",
            f"output: {self.directory}/ (one store per scene)",
        ]


def store_file_name(name: str) -> str:
    """The file name of a scene's store: its name with path separators and odd characters replaced."""
    safe = re.sub(r"[^A-Za-z0-9._~+-]+", "_", name.replace("/", "__")).strip("._") or "scene"
    return f"{safe}.parquet"


def check_dataset_output(directory: str | os.PathLike[str], sources: Sequence[SceneSource]) -> Path:
    """The dataset directory (created when missing; its parent must exist).

    Raises:
        OutputError: the path is a file, or its parent folder is missing.
    """
    out = Path(directory).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"{out} is a file; several scenes make a dataset directory (one store per scene): give -o DIR/"
        )
    if not out.parent.is_dir():
        raise OutputError(f"the folder of {out} does not exist; create {out.parent} first")
    for source in sources:
        check_output_not_input(out / store_file_name(source.name), [source])
    return out


def plan_dataset(
    sources: Sequence[SceneSource],
    directory: Path,
    settings: MapSettings,
    dtype: str = "float16",
    captioner: CaptionerSpec | None = None,
    caption_encoder: str | None = "minilm",
    fail_fast: bool = False,
) -> list[SceneEmbed]:
    """Plan every scene (a scene that cannot be planned is recorded, unless ``fail_fast``).

    Raises:
        InputError: no scene can be planned, band counts differ without ``--bands``, or some
            scenes have a CRS and others none.
    """
    scenes = []
    names = [store_file_name(source.name) for source in sources]
    if len(set(names)) < len(names):
        raise InputError("two scenes have the same store file name; rename one of them")
    for source, name in zip(sources, names):
        scene = SceneEmbed(source, directory / name)
        try:
            scene.plan = plan_embed(dataclasses.replace(settings, scene=source.path), dtype, captioner, caption_encoder)
        except InputError as exc:
            if fail_fast:
                raise
            scene.reason = exc.message
        scenes.append(scene)
    planned = [s.plan.scene for s in scenes if s.plan is not None and s.plan.scene is not None]
    if not planned:
        first = scenes[0]
        raise InputError(f"no scene can be embedded; the first, {first.source.name}: {first.reason}")
    check_alike(planned, settings.bands is not None)
    return scenes


def embed_dataset(
    scenes: Sequence[SceneEmbed],
    directory: Path,
    overwrite: bool = False,
    restart: bool = False,
    fail_fast: bool = False,
    progress_mode: str = "bar",
    executor: Executor | None = None,
) -> DatasetSummary:
    """Embed every planned scene into its own store file in ``directory``.

    A complete file with the same plan fingerprint is kept; one made with other settings is
    refused without ``overwrite``. The model loads once for all scenes.
    """
    start = time.monotonic()
    directory.mkdir(exist_ok=True)
    summary = DatasetSummary(directory, list(scenes))
    todo = [s for s in scenes if s.plan is not None and not _keep(s, overwrite)]
    executor = executor or LocalExecutor()
    total = sum(s.plan.n_chips for s in todo if s.plan is not None)
    fields = {"scenes_done": len(scenes) - len(todo), "scenes_total": len(scenes)}
    progress = Progress(total, progress_mode, desc="embed", fields=fields)
    progress.set_fields(**fields)
    try:
        for scene in todo:
            _embed_one(scene, overwrite, restart, fail_fast, progress, executor)
            done = sum(1 for s in scenes if s.kept or s.summary is not None)
            progress.set_fields(scenes_done=done, scenes_total=len(scenes))
            progress.event("scene", scene=scene.source.name)
    finally:
        progress.close()
    summary.elapsed = time.monotonic() - start
    progress.event("done", output=str(directory), failed=summary.n_failed, failed_scenes=len(summary.failed_scenes))
    return summary


def _keep(scene: SceneEmbed, overwrite: bool) -> bool:
    """True when the scene's file is complete and made with the same settings (nothing to do).

    Raises:
        OutputError: the file exists, made with other settings, and ``overwrite`` is false.
    """
    assert scene.plan is not None
    if not scene.path.exists():
        return False
    try:
        meta = open_store(scene.path).meta
    except InputError:
        meta = None
    if meta is not None and meta.complete and meta.extra.get("run_fingerprint") == _fingerprint(scene):
        scene.kept = True
        return True
    if not overwrite:
        raise OutputError(
            f"{scene.path} exists and was not made by this command (other scene or settings); pass --overwrite "
            "to replace it, or choose another -o directory"
        )
    return False


def _fingerprint(scene: SceneEmbed) -> str:
    assert scene.plan is not None
    return f"{scene.plan.fingerprint()}-{scene.plan.dtype}"


def _embed_one(
    scene: SceneEmbed, overwrite: bool, restart: bool, fail_fast: bool, progress: Progress, executor: Executor
) -> None:
    assert scene.plan is not None
    extra = {"scene_name": scene.source.name, "datetime": scene.source.datetime, "run_fingerprint": _fingerprint(scene)}
    try:
        scene.summary = embed_to_file(
            scene.plan, scene.path, overwrite=overwrite, restart=restart, executor=executor, progress=progress,
            extra=extra,
        )  # fmt: skip
    except GeobimorsError as exc:
        if fail_fast:
            raise
        scene.reason = exc.message

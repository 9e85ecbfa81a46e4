"""geobimors: map what is on the ground in satellite and aerial scenes with vision-language models.

The public API (heavy dependencies load on first use):

* :func:`map_scene` -- classify every chip of a scene file, get a GeoDataFrame;
* :func:`map_to_gpkg` -- the same, written to a styled GeoPackage (what ``geobimors map`` does);
* :func:`classify` -- classify a rioxarray DataArray, get a (lazy) Dataset on the chip grid;
  also ``da.geobimors.classify(...)`` and ``ds.geobimors.to_geodataframe()``;
* :func:`load_model` / :func:`load_head` -- CLIP models and trained heads (cached per process);
* :func:`train` / :func:`evaluate` -- few-shot heads and their accuracy;
* :func:`read_labels` -- read a labels file;
* :func:`embed` -- embed every chip of a scene once into a GeoParquet store (what ``geobimors embed`` does);
* :func:`classify_embeddings` -- label a store's chips without reading pixels, get a GeoDataFrame;
* :func:`search` -- the chips of an embeddings store that best match text or examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geobimors._version import __version__
from geobimors._xarray_hook import register_accessors as _register_accessors

_register_accessors()  # .geobimors on xarray objects, without importing xarray here

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import geopandas as gpd
    import xarray as xr

    from geobimors.accuracy import Assessment
    from geobimors.embeddings.embed import EmbedSummary
    from geobimors.embeddings.multi import DatasetSummary
    from geobimors.embeddings.store import EmbeddingStore
    from geobimors.heads.base import Head
    from geobimors.labels import Label
    from geobimors.models.clip import ClipModel
    from geobimors.run.multi import MultiSummary
    from geobimors.run.pipeline import RunSummary
    from geobimors.train.loop import TrainResult

__all__ = [
    "__version__",
    "assess",
    "classify",
    "classify_embeddings",
    "embed",
    "evaluate",
    "evaluate_retrieval",
    "load_head",
    "load_model",
    "map_scene",
    "map_to_gpkg",
    "read_labels",
    "search",
    "train",
]


def _settings(scene: str, labels: Sequence[str | Label] | str | Path, **options: Any) -> Any:
    from pathlib import Path

    from geobimors.labels import Label, labels_from_names, read_labels
    from geobimors.run.plan import MapSettings

    if isinstance(labels, (str, Path)):
        parsed = read_labels(labels)
    elif all(isinstance(label, Label) for label in labels):
        parsed = [label for label in labels if isinstance(label, Label)]
    elif labels:
        parsed = labels_from_names([str(label) for label in labels])
    else:
        parsed = []
    for key in ("bands",):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    captions = options.pop("captions", None)
    if captions is not None:  # captions="mini": a caption column by that captioner (default generation settings)
        from geobimors.models.captions import CaptionerSpec

        options["captioner"] = captions if isinstance(captions, CaptionerSpec) else CaptionerSpec(str(captions))
    for key in ("chip_size", "overlap", "head"):
        if options.get(key) is not None:
            options[key] = str(options[key])
    return MapSettings(scene=str(scene), labels=tuple(parsed), **options)


def _progress_mode(progress: bool | str) -> str:
    """``True`` -> a tqdm.auto bar (a widget in Jupyter), ``False`` -> quiet, or a mode by name."""
    if isinstance(progress, bool):
        return "bar" if progress else "none"
    return progress


def map_scene(
    scene: str | Path, labels: Sequence[str | Label] | str | Path = (), progress: bool | str = False, **options: Any
) -> gpd.GeoDataFrame:
    """Classify every chip of a scene and return the labeled chip polygons.

    Args:
        scene: path or URL of any GDAL raster.
        labels: label names (``"forest"`` or ``"forest: dense tree cover"``), or a
            labels file; may be empty with ``head=`` (its training classes).
        progress: ``True`` for a progress bar (tqdm.auto: a widget in Jupyter), ``False``
            (the default) for none, or a mode: ``bar``, ``jsonl`` or ``none``.
        **options: :class:`geobimors.run.plan.MapSettings` fields, e.g.
            ``model="ViT-B-16:openai"``, ``chip_size="640m"``, ``bands=(3, 2, 1)``, ``top_k=3``,
            ``head="head.safetensors"``; ``captions="mini"`` adds a ``caption`` column.

    Returns:
        One polygon per classified chip in the scene's CRS with ``label``,
        ``score``, ``label_2``/``score_2``..., ``row``, ``col``, ``valid_fraction``, ``model``.
    """
    from geobimors.run.pipeline import map_plan
    from geobimors.run.plan import plan_map

    return map_plan(plan_map(_settings(str(scene), labels, **options)), progress_mode=_progress_mode(progress))


def _scene_list(scene: str | Path | Sequence[str | Path], options: dict[str, Any]) -> list[Any] | None:
    """Several scenes (a list, a folder, a glob, ``@list.txt``, a STAC file) resolved; ``None`` for one file."""
    from pathlib import Path

    from geobimors.raster.sources import resolve_scenes

    asset = options.pop("asset", None)
    if isinstance(scene, (str, Path)):
        text = str(scene)
        several = text.startswith("@") or Path(text).is_dir() or any(c in text for c in "*?[")
        if not several and Path(text).suffix.lower() not in (".json", ".geojson"):
            return None
        scene = [text]
    network = bool(options.get("allow_network"))
    return resolve_scenes([str(s) for s in scene], asset=asset, allow_network=network, missing_ok=len(scene) > 1)


def map_to_gpkg(
    scene: str | Path | Sequence[str | Path],
    labels: Sequence[str | Label] | str | Path,
    output: str | Path,
    overwrite: bool = False,
    regions: bool = False,
    progress: bool | str = False,
    **options: Any,
) -> RunSummary | MultiSummary:
    """Classify every chip of a scene (or several) and write a styled GeoPackage (what ``geobimors map`` does).

    Read it back with ``geopandas.read_file(output, layer="chips")`` (the file also holds
    ``layer_styles``, and ``regions`` with ``regions=True``). Arguments as in :func:`map_scene`.

    ``scene`` may also be a list of scenes, a folder, a glob, ``@list.txt`` or a STAC file: the
    scenes make one layer with ``scene``, ``datetime`` and ``source_crs`` columns (see the README,
    "Many scenes"); options ``crs``, ``keep_overlaps``, ``fail_fast``, ``restart`` and ``asset``
    apply to them.

    Returns:
        The run summary (counts, label histogram, timing; per scene for several scenes).
    """
    from geobimors.run.pipeline import map_to_file
    from geobimors.run.plan import plan_map

    many = {key: options.pop(key) for key in ("crs", "keep_overlaps", "fail_fast", "restart") if key in options}
    sources = _scene_list(scene, options)
    if sources is not None and (len(sources) > 1 or many.get("crs")):
        from geobimors.run.multi import map_scenes_to_file, plan_scenes

        settings = _settings(sources[0].path, labels, **options)
        multi = plan_scenes(sources, settings, many.pop("crs", None), bool(many.get("fail_fast")))
        return map_scenes_to_file(
            multi, output, overwrite=overwrite, regions=regions, progress_mode=_progress_mode(progress), **many
        )
    path = sources[0].path if sources is not None else str(scene)
    plan = plan_map(_settings(path, labels, **options))
    return map_to_file(
        plan, output, overwrite=overwrite, regions=regions, progress_mode=_progress_mode(progress),
        restart=bool(many.get("restart")),
    )  # fmt: skip


def classify(data: xr.DataArray, labels: Sequence[str | Label] = (), **options: Any) -> xr.Dataset:
    """Classify a (band, y, x) DataArray on its chip grid (lazy for dask-backed input).

    See :func:`geobimors.xarray.classify` for the options.
    """
    from geobimors.xarray import classify as _classify

    return _classify(data, labels, **options)


def load_model(name: str = "mini", device: str = "auto", precision: str = "fp32", tta: int = 1) -> ClipModel:
    """Load a CLIP model by name, once per process (see :mod:`geobimors.models.clip`).

    ``tta`` (2, 4 or 8) averages image features over turned and mirrored views of each image.
    """
    from geobimors.models.clip import load_model as _load

    return _load(name, device, precision, tta)


def load_head(path: str | Path, model: str | None = None, device: str = "auto", precision: str = "fp32") -> Head:
    """Load a trained head with its CLIP model (default: the one it was trained with)."""
    from geobimors.heads.checkpoint import load_head as _load_head
    from geobimors.heads.checkpoint import read_metadata

    name = model or str(read_metadata(path)["clip_model"])
    return _load_head(path, load_model(name, device, precision))


def train(
    data: str | Path, output: str | Path, progress: bool | str = False, **options: Any
) -> tuple[Head, TrainResult]:
    """Train a few-shot head and save it (see :func:`geobimors.train.api.train`).

    Quiet unless ``progress`` is ``True`` (a bar), ``"bar"`` or ``"jsonl"``.
    """
    from geobimors.train.api import train as _train

    return _train(data, output, progress=_progress_mode(progress), **options)


def evaluate(data: str | Path, **options: Any) -> dict[str, Any]:
    """Accuracy report of a head or of zero-shot CLIP (see :func:`geobimors.train.api.evaluate_data`)."""
    from geobimors.train.api import evaluate_data

    report = evaluate_data(data, **options)
    report.pop("_evaluation", None)
    return report


def evaluate_retrieval(captions: str | Path, **options: Any) -> dict[str, Any]:
    """Image-text retrieval R@1/5/10 and mR on a caption set (see :func:`geobimors.train.retrieval.evaluate_retrieval`).

    Example:
        >>> geobimors.evaluate_retrieval("ucm_captions.jsonl", model="mini", split="test")["mR"]
    """
    from geobimors.train.retrieval import evaluate_retrieval as _evaluate

    return _evaluate(captions, **options)


def read_labels(path: str | Path) -> list[Label]:
    """Read a labels file (one label per line, ``#`` comments, ``label: prompt``)."""
    from geobimors.labels import read_labels as _read

    return _read(path)


def search(store: str | Path, queries: str | Sequence[str] = (), **options: Any) -> gpd.GeoDataFrame:
    """The chips of an embeddings store that best match text queries or examples.

    Args:
        store: a GeoParquet embeddings store (``geobimors embed``).
        queries: text queries ("solar farm"), one or several.
        **options: ``like``, ``unlike``, ``unlike_weight``, ``k`` (100), ``within`` (vector file,
            shapely geometry or ``"XMIN,YMIN,XMAX,YMAX[@CRS]"``), ``min_score``, ``caption_weight``,
            ``model``, ``device``, ``use_index`` (see :func:`geobimors.embeddings.search.search`).

    Returns:
        One polygon per hit in the store's CRS: ``rank``, ``score``, ``query``, ``chip_id``,
        ``row``, ``col`` and ``caption`` (when stored); ``frame.attrs["notes"]`` holds remarks
        such as an empty ``within`` area or a stale index.
    """
    from geobimors.embeddings.search import search as _search

    result = _search(store, queries, **options)
    result.frame.attrs["notes"] = list(result.notes)
    result.frame.attrs["method"] = result.method
    return result.frame


def embed(
    scene: str | Path | Sequence[str | Path],
    output: str | Path,
    model: str = "mini",
    dtype: str = "float16",
    captions: str | None = None,
    caption_encoder: str | None = "minilm",
    overwrite: bool = False,
    restart: bool = False,
    progress: bool | str = False,
    **options: Any,
) -> EmbedSummary | DatasetSummary:
    """Embed every valid chip of a scene into a GeoParquet store (what ``geobimors embed`` does).

    Args:
        scene: path or URL of any GDAL raster; or several (a list, folder, glob, ``@list.txt``,
            STAC file), embedded into a dataset directory with one store per scene.
        output: the ``.parquet`` store to write (atomically; an interrupted run resumes); for
            several scenes the directory (``region.parquet/``).
        model: CLIP model name.
        dtype: ``float16`` (default) or ``float32`` embeddings.
        captions: also store each chip's caption by this BLIP-2/BLIP captioner (``None``: no captions).
        caption_encoder: text encoder of the stored caption embeddings (``None``: captions only).
        overwrite: replace an existing store.
        restart: discard an interrupted earlier run instead of resuming it.
        progress: ``True`` for a progress bar, ``False`` (default) for none, or ``"jsonl"``.
        **options: chip options as :class:`geobimors.run.plan.MapSettings` fields
            (``chip_size``, ``overlap``, ``gsd``, ``bands``, ``batch_size``, ``device``, ...).

    Returns:
        The run summary (chips embedded, skipped, failed; timing).
    """
    from geobimors.embeddings.embed import embed_to_file, plan_embed
    from geobimors.models.captions import CaptionerSpec

    fail_fast = bool(options.pop("fail_fast", False))
    sources = _scene_list(scene, options)
    spec = CaptionerSpec(captions) if captions is not None else None
    if sources is not None and len(sources) > 1:
        from geobimors.embeddings.multi import check_dataset_output, embed_dataset, plan_dataset

        directory = check_dataset_output(output, sources)
        settings = _settings(sources[0].path, [], model=model, **options)
        scenes = plan_dataset(sources, directory, settings, dtype, spec, caption_encoder, fail_fast)
        return embed_dataset(scenes, directory, overwrite, restart, fail_fast, _progress_mode(progress))
    settings = _settings(sources[0].path if sources is not None else str(scene), [], model=model, **options)
    plan = plan_embed(settings, dtype, spec, caption_encoder)
    return embed_to_file(plan, output, overwrite=overwrite, restart=restart, progress_mode=_progress_mode(progress))


def classify_embeddings(
    store: str | Path | EmbeddingStore,
    labels: Sequence[str | Label] | str | Path = (),
    head: str | Path | None = None,
    model: str | None = None,
    top_k: int = 3,
    device: str = "auto",
) -> gpd.GeoDataFrame:
    """Label the chips of an embeddings store without reading pixels.

    Returns the same columns as :func:`map_scene` (same labels, scores within 1e-4
    of a map run for a float32 store); see :func:`geobimors.embeddings.classify.classify_embeddings`.
    """
    from geobimors.embeddings.classify import classify_embeddings as _classify_embeddings

    return _classify_embeddings(store, labels, head=head, model=model, top_k=top_k, device=device)


def assess(map_path: str | Path, reference: str | Path, **options: Any) -> Assessment:
    """Accuracy of a map against a reference raster or polygons (see :func:`geobimors.accuracy.assess`)."""
    from geobimors.accuracy import assess as _assess

    return _assess(map_path, reference, **options)

"""geobimors: map what is on the ground in satellite and aerial scenes with vision-language models.

The public API (heavy dependencies are imported on first use):

* :func:`map_scene` -- classify every chip of a scene, get a GeoDataFrame;
* :func:`map_to_gpkg` -- the same, written to a styled GeoPackage (what the CLI does);
* :func:`load_model` -- load a CLIP model by name (cached per process);
* :func:`read_labels` -- read a labels file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import geopandas as gpd

    from geobimors.labels import Label
    from geobimors.models.clip import ClipModel
    from geobimors.run.pipeline import RunSummary

__all__ = ["__version__", "load_model", "map_scene", "map_to_gpkg", "read_labels"]


def _settings(scene: str, labels: Sequence[str | Label] | str | Path, **options: Any) -> Any:
    from pathlib import Path

    from geobimors.labels import Label, labels_from_names, read_labels
    from geobimors.run.plan import MapSettings

    if isinstance(labels, (str, Path)):
        parsed = read_labels(labels)
    elif all(isinstance(label, Label) for label in labels):
        parsed = list(labels)  # type: ignore[arg-type]
    else:
        parsed = labels_from_names([str(label) for label in labels])
    if options.get("bands") is not None:
        options["bands"] = tuple(options["bands"])
    if options.get("chip_size") is not None:
        options["chip_size"] = str(options["chip_size"])
    options["overlap"] = str(options.get("overlap", "0"))
    return MapSettings(scene=str(scene), labels=tuple(parsed), **options)


def map_scene(
    scene: str | Path, labels: Sequence[str | Label] | str | Path, progress: str = "bar", **options: Any
) -> gpd.GeoDataFrame:
    """Classify every chip of a scene and return the labeled chip polygons.

    Args:
        scene: path or URL of any GDAL raster.
        labels: label names (``"forest"`` or ``"forest: dense tree cover"``) or a labels file.
        progress: ``bar`` (tqdm, Jupyter-aware), ``jsonl`` or ``none``.
        **options: :class:`geobimors.run.plan.MapSettings` fields, e.g.
            ``model="ViT-B-16:openai"``, ``chip_size="640m"``, ``bands=(3, 2, 1)``, ``top_k=3``.

    Returns:
        One polygon per classified chip in the scene's CRS with ``label``,
        ``score``, ``label_2``/``score_2``..., ``row``, ``col``, ``valid_fraction``, ``model``.
    """
    from geobimors.run.pipeline import map_plan
    from geobimors.run.plan import plan_map

    return map_plan(plan_map(_settings(str(scene), labels, **options)), progress_mode=progress)


def map_to_gpkg(
    scene: str | Path,
    labels: Sequence[str | Label] | str | Path,
    output: str | Path,
    overwrite: bool = False,
    regions: bool = False,
    progress: str = "bar",
    **options: Any,
) -> RunSummary:
    """Classify every chip of a scene and write a styled GeoPackage (what ``geobimors map`` does).

    Returns:
        The run summary (counts, label histogram, timing).
    """
    from geobimors.run.pipeline import map_to_file
    from geobimors.run.plan import plan_map

    plan = plan_map(_settings(str(scene), labels, **options))
    return map_to_file(plan, output, overwrite=overwrite, regions=regions, progress_mode=progress)


def load_model(name: str = "mini", device: str = "auto", precision: str = "fp32") -> ClipModel:
    """Load a CLIP model by name, once per process (see :mod:`geobimors.models.clip`)."""
    from geobimors.models.clip import load_model as _load

    return _load(name, device, precision)


def read_labels(path: str | Path) -> list[Label]:
    """Read a labels file (one label per line, ``#`` comments, ``label: prompt``)."""
    from geobimors.labels import read_labels as _read

    return _read(path)

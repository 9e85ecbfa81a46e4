"""xarray / rioxarray API: classify a DataArray on its chip grid, lazily when it is dask-backed.

    import rioxarray, geobimors.xarray
    scene = rioxarray.open_rasterio("scene.tif", chunks={"y": 1024})
    result = scene.geobimors.classify(labels=["forest", "water", "fields"])   # lazy Dataset
    result.compute()
    chips = result.geobimors.to_geodataframe()                                  # like `geobimors map`

The result is a Dataset on the chip grid: ``probability`` (labels, y, x) with
the class names as the ``labels`` coordinate (``ds.probability.sel(labels="forest")``),
``score`` and ``label`` (y, x), ``valid_fraction`` (y, x); ``x``/``y`` are chip
centres in the scene CRS, which is kept (``.rio.crs``, ``spatial_ref``). One
Dask task classifies one row of chips and reads only the scene rows it needs;
nothing runs (no model loads) until ``.compute()``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as dsa
import geopandas as gpd
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from geobimors.errors import InputError
from geobimors.heads.classifier import ClassifierSpec, get_classifier
from geobimors.labels import Label, labels_from_names
from geobimors.models.clip import check_tta
from geobimors.models.prompts import REMOTE_SENSING_TEMPLATES
from geobimors.raster.grid import ChipGrid, GridSpec, build_grid
from geobimors.raster.read import ArrayChipReader, ReadSpec
from geobimors.raster.scaling import (
    ScaleRange,
    check_percentiles,
    needs_scaling,
    parse_scale_range,
    percentile_range,
)
from geobimors.raster.scene import SceneInfo, select_bands
from geobimors.run.plan import DEFAULT_MODEL, LITERAL_WITH_HEAD, default_gsd, model_defaults
from geobimors.run.store import label_columns
from geobimors.vector.gpkg import chip_polygons

GRID_ATTR = "geobimors_grid"
STATS_SAMPLE_PIXELS = 1_000_000


def _scene_info(data: xr.DataArray) -> SceneInfo:
    if data.ndim == 2:
        data = data.expand_dims("band")
    if data.ndim != 3:
        raise InputError(f"classify needs a (band, y, x) DataArray, got dimensions {data.dims}")
    transform = data.rio.transform()
    if transform.b != 0 or transform.d != 0:
        raise InputError(
            "classify needs a north-up DataArray (no rotation); use geobimors.map_scene for rotated scenes"
        )
    nodata = data.rio.nodata if data.rio.nodata is not None else data.rio.encoded_nodata
    return SceneInfo(
        path="<DataArray>",
        width=int(data.sizes[data.rio.x_dim]),
        height=int(data.sizes[data.rio.y_dim]),
        count=int(data.shape[0]),
        dtype=str(data.dtype),
        crs=data.rio.crs,
        transform=transform,
        nodata=None if nodata is None or (isinstance(nodata, float) and np.isnan(nodata)) else float(nodata),
        colorinterp=tuple(str(d).lower() for d in data.attrs.get("long_name", ()))
        if isinstance(data.attrs.get("long_name"), (list, tuple))
        else (),
        overview_factors=(),
    )


def _scale_range(
    values: Any, bands: tuple[int, int, int], percentiles: tuple[float, float], nodata: float | None
) -> ScaleRange:
    """Scene-level range from an evenly strided sample of the array (computed inside the graph)."""
    _, height, width = values.shape
    step = max(1, int(np.sqrt(height * width / STATS_SAMPLE_PIXELS)))
    unique = sorted(set(bands))
    sample = np.asarray(values[[b - 1 for b in unique], ::step, ::step], dtype=np.float64)
    valid = np.all(np.isfinite(sample), axis=0)
    if nodata is not None:
        valid &= np.all(sample != nodata, axis=0)
    samples = {band: sample[i][valid] for i, band in enumerate(unique)}
    return percentile_range(samples, bands, percentiles, "a sample of the array", "<DataArray>")


def _classify_row(
    values: np.ndarray, scale: ScaleRange | None, read: ReadSpec, classifier: ClassifierSpec, row: int, row_offset: int
) -> np.ndarray:
    """Probabilities and valid fraction of one row of chips: (n_cols, C + 1) float32."""
    import dataclasses

    reader = ArrayChipReader(dataclasses.replace(read, scale=scale), values, row_offset)
    grid = read.grid
    chips = [grid.chip(row, col) for col in range(grid.n_cols)]
    batch = reader.read_batch(chips)
    out = np.full((len(chips), len(classifier.labels) + 1), np.nan, dtype=np.float32)
    out[:, -1] = batch.valid_fraction
    if batch.keep.any():
        probabilities, _ = get_classifier(classifier).classify(batch.pixels[batch.keep])
        out[batch.keep, :-1] = probabilities.numpy()
    return out


def classify(
    data: xr.DataArray,
    labels: Sequence[str | Label] = (),
    model: str | None = None,
    chip_size: str | int | None = None,
    overlap: str | int = 0,
    gsd: float | None = None,
    bands: Sequence[int] | None = None,
    scale_range: str | Sequence[float] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    nodata: float | None = None,
    min_valid: float = 0.5,
    device: str = "auto",
    precision: str = "fp32",
    head: str | None = None,
    templates: Sequence[str] = REMOTE_SENSING_TEMPLATES,
    progress: bool = False,
    tta: int = 1,
    literal_labels: bool = False,
) -> xr.Dataset:
    """Classify every chip of a (band, y, x) DataArray.

    The chip grid, band selection, nodata handling and 8-bit scaling follow
    ``geobimors map``. Dask-backed input gives a lazy result; in-memory input
    is computed at once (with a progress bar when ``progress``).

    Args:
        data: a rioxarray DataArray with a transform and (ideally) a CRS.
        labels: label names (``"forest"`` or ``"forest: dense tree cover"``);
            may be empty with ``head`` (its training classes).
        model: CLIP model name (default: the head's, else ``mini``).
        chip_size: chip size in pixels or ground units (default: the model's, else 224).
        overlap: overlap between chips, in the units of ``chip_size``.
        gsd: resample chips to this ground resolution in m/px (default: the
            model's native resolution when it declares one).
        bands: 1-based bands for R, G, B (or one for grey).
        scale_range: manual range mapped to 0..255 (non-8-bit data).
        percentiles: percentiles mapped to 0..255 for non-8-bit data.
        nodata: nodata value (default: the DataArray's).
        min_valid: chips with a smaller valid fraction are left empty (NaN).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        head: trained head checkpoint.
        templates: prompt templates for zero-shot classification.
        progress: show a progress bar (tqdm.auto: a widget in notebooks) when computing in-memory input.
        tta: test-time augmentation: classify the mean features of 1 (off), 2, 4 or 8 turned and
            mirrored views of each chip (N views take N image passes).
        literal_labels: read every zero-shot label as written, without anchoring labels the bundled
            model was not trained on to its nearest trained classes (:mod:`geobimors.models.anchors`).

    Returns:
        The Dataset described in the module docs.
    """
    check_tta(tta)
    if literal_labels and head is not None:
        raise InputError(LITERAL_WITH_HEAD)
    model, label_list = _model_and_labels(model, labels, head)
    info = _scene_info(data)
    if info.crs is None:
        raise InputError("the DataArray has no CRS (.rio.crs); write one with .rio.write_crs('EPSG:XXXX')")
    default_chip, _ = model_defaults(model)
    selection = select_bands(info, bands)
    grid = build_grid(info, GridSpec.parse(chip_size or default_chip or 224, overlap, gsd or default_gsd(info, model)))
    values = data.data if data.ndim == 3 else data.data[None]
    nodata = nodata if nodata is not None else info.nodata
    read = ReadSpec(info.path, grid, selection.indexes, None, nodata, min_valid)
    spec = ClassifierSpec(
        model, tuple(label_list), device, precision, tuple(templates), head=head, tta=tta, literal_labels=literal_labels
    )
    scale = _lazy_scale_range(values, info, selection.indexes, scale_range, percentiles, nodata)
    stacked = _lazy_rows(values, grid, scale, read, spec)
    dataset = _dataset(stacked, grid, [lb.name for lb in label_list], spec)
    if isinstance(values, dsa.Array):
        return dataset
    return _compute(dataset, progress)


def _model_and_labels(model: str | None, labels: Sequence[str | Label], head: str | None) -> tuple[str, list[Label]]:
    """The model and labels to classify with: given, else the head's, else the default model."""
    if head is not None:
        from geobimors.heads.checkpoint import checkpoint_labels, read_metadata

        metadata = read_metadata(head)
        model = model or str(metadata["clip_model"])
        labels = labels or checkpoint_labels(metadata)
    if all(isinstance(lb, Label) for lb in labels):
        return model or DEFAULT_MODEL, [lb for lb in labels if isinstance(lb, Label)]
    return model or DEFAULT_MODEL, labels_from_names([str(lb) for lb in labels])


def _lazy_scale_range(
    values: Any,
    info: SceneInfo,
    bands: tuple[int, int, int],
    scale_range: str | Sequence[float] | None,
    percentiles: tuple[float, float],
    nodata: float | None,
) -> Any:
    """The 8-bit scaling: a given range, a delayed percentile range (non-8-bit data), or ``None``."""
    if scale_range is not None:
        low, high = parse_scale_range(scale_range)
        return ScaleRange(low, high, "given")  # type: ignore[arg-type]
    if needs_scaling(info.dtype):
        check_percentiles(percentiles)
        return dask.delayed(_scale_range, pure=True)(values, bands, percentiles, nodata)
    return None


def _lazy_rows(values: Any, grid: ChipGrid, scale: Any, read: ReadSpec, spec: ClassifierSpec) -> dsa.Array:
    """One delayed task per row of chips, reading only its rows of the scene: (rows, cols, C + 1)."""
    rows = []
    for row in range(grid.n_rows):
        y0 = row * grid.stride_y
        block = values[:, y0 : min(y0 + grid.chip_height, grid.height), :]
        task = dask.delayed(_classify_row, pure=True)(block, scale, read, spec, row, y0)
        rows.append(dsa.from_delayed(task, shape=(grid.n_cols, len(spec.labels) + 1), dtype=np.float32))
    return dsa.stack(rows)


def _compute(dataset: xr.Dataset, progress: bool) -> xr.Dataset:
    if not progress:
        return dataset.compute()
    from tqdm.dask import TqdmCallback

    with TqdmCallback(desc="chip rows", tqdm_class=_auto_tqdm()):
        return dataset.compute()


def _auto_tqdm() -> Any:
    from tqdm.auto import tqdm

    return tqdm


def _dataset(stacked: dsa.Array, grid: ChipGrid, names: list[str], spec: ClassifierSpec) -> xr.Dataset:
    t = grid.transform
    cols = np.arange(grid.n_cols) * grid.stride_x + grid.chip_width / 2
    rows = np.arange(grid.n_rows) * grid.stride_y + grid.chip_height / 2
    x = t.c + t.a * cols
    y = t.f + t.e * rows
    probability = stacked[..., :-1].transpose(2, 0, 1)
    best = dsa.nanargmax(dsa.where(dsa.isnan(probability), -1.0, probability), axis=0)
    classified = ~dsa.isnan(probability[0])
    label_names = np.asarray([*names, None], dtype=object)  # the last entry names skipped chips
    label = dsa.map_blocks(lambda b, c: label_names[np.where(c, b, len(names))], best, classified, dtype=object)
    grid_attr = json.dumps(
        {
            "transform": list(t)[:6],
            "width": grid.width,
            "height": grid.height,
            "chip_width": grid.chip_width,
            "chip_height": grid.chip_height,
            "stride_x": grid.stride_x,
            "stride_y": grid.stride_y,
            "model": spec.model,
            "head": spec.head,
        }
    )
    dataset = xr.Dataset(
        {
            "probability": (("labels", "y", "x"), probability),
            "score": (("y", "x"), dsa.nanmax(probability, axis=0)),
            "label": (("y", "x"), label),
            "valid_fraction": (("y", "x"), stacked[..., -1]),
        },
        coords={"labels": names, "x": x, "y": y},
        attrs={GRID_ATTR: grid_attr},
    )
    dataset["label"].attrs["description"] = "best label per chip (None: skipped, mostly nodata)"
    dataset["probability"].attrs["description"] = "class probability per chip"
    dataset = dataset.rio.write_crs(grid.crs)
    return dataset.rio.write_transform(
        Affine(
            t.a * grid.stride_x,
            0,
            x[0] - t.a * grid.stride_x / 2,
            0,
            t.e * grid.stride_y,
            y[0] - t.e * grid.stride_y / 2,
        )
    )


def to_geodataframe(dataset: xr.Dataset, top_k: int = 3) -> gpd.GeoDataFrame:
    """Chip polygons of a classify() result, with the columns ``geobimors map`` writes.

    For the same scene and settings the frame equals the CLI's ``chips`` layer.
    """
    grid = json.loads(dataset.attrs[GRID_ATTR])
    dataset = dataset.load()
    probability = dataset["probability"].values  # (C, rows, cols)
    names = np.asarray(dataset.coords["labels"].values, dtype=object)
    n_classes, n_rows, n_cols = probability.shape
    row_grid, col_grid = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rows, cols = row_grid.ravel(), col_grid.ravel()
    flat = probability.reshape(n_classes, -1).T  # (chips, C)
    keep = ~np.isnan(flat[:, 0])
    rows, cols, flat = rows[keep], cols[keep], flat[keep]
    k = min(top_k, n_classes)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    data: dict[str, Any] = {}
    for rank, (label_col, score_col) in enumerate(label_columns(k)):
        data[label_col] = names[order[:, rank]]
        data[score_col] = np.take_along_axis(flat, order[:, rank : rank + 1], axis=1)[:, 0].astype(np.float32)
    data["row"] = rows.astype(np.int32)
    data["col"] = cols.astype(np.int32)
    data["valid_fraction"] = dataset["valid_fraction"].values[rows, cols].astype(np.float32)
    data["model"] = grid["model"]
    windows = np.stack(
        [
            cols * grid["stride_x"],
            rows * grid["stride_y"],
            np.minimum(grid["chip_width"], grid["width"] - cols * grid["stride_x"]),
            np.minimum(grid["chip_height"], grid["height"] - rows * grid["stride_y"]),
        ],
        axis=1,
    )
    geometry = chip_polygons(Affine(*grid["transform"]), windows)
    return gpd.GeoDataFrame(pd.DataFrame(data), geometry=geometry, crs=dataset.rio.crs)

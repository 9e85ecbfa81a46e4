"""Accuracy of a map against a reference map, as land-cover assessments report it.

The map is a ``geobimors map`` GeoPackage (one polygon per chip, with its
``label``); the reference is a classified raster (one integer class per pixel)
or labelled polygons. Each chip is given the reference class that covers most
of it, with that class's share of the chip's labelled part as its *purity*;
chips with too little reference under them (nodata, no polygon) are left out.
An optional mapping file translates map labels to reference classes (several
labels may map to one class). Reported: the confusion matrix (rows: reference,
columns: map), overall accuracy, Cohen's kappa, per-class precision (user's
accuracy), recall (producer's accuracy) and F1, the majority-class baseline
(always answering the most common reference class), and the same matrix
weighted by chip area with mapped and reference area per class.

Map labels that are no reference class get matrix columns of their own (after
the reference classes); their chips are errors in every figure, as in land-cover
assessment (Olofsson et al. 2014): they count in the overall accuracy's total,
and in the support of their reference class (its whole row), lowering its
recall (producer's accuracy).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geobimors.errors import InputError, warn
from geobimors.labels import normalise_label

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc"}
DEFAULT_MIN_COVER = 0.5


def _reference_rows(confusion: np.ndarray) -> np.ndarray:
    """Check a K x (K + X) matrix: K reference rows; the first K map columns are the same classes."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[1] < confusion.shape[0]:
        raise ValueError(f"confusion matrix must be K x (K + X) (rows: reference, columns: map), not {confusion.shape}")
    return confusion


def overall_accuracy(confusion: np.ndarray) -> float:
    """Share of the diagonal (rows: reference, columns: map).

    ``confusion`` may be K x (K + X): the X columns after the reference classes
    hold chips mapped to labels that are no reference class; they count in the
    total, as errors.
    """
    confusion = _reference_rows(confusion)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def cohen_kappa(confusion: np.ndarray) -> float:
    """Cohen's kappa: agreement beyond what the row and column totals give by chance.

    ``confusion`` may be K x (K + X) as in :func:`overall_accuracy`; the extra map
    classes have no reference chips, so they add nothing to chance agreement.
    """
    confusion = _reference_rows(confusion)
    total = confusion.sum()
    if not total:
        return float("nan")
    k = confusion.shape[0]
    observed = np.trace(confusion) / total
    expected = float((confusion[:, :k].sum(axis=0) * confusion.sum(axis=1)).sum()) / total**2
    return float((observed - expected) / (1 - expected)) if expected < 1 else float("nan")


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision (user's accuracy), recall (producer's accuracy), F1 and support of every reference class.

    ``confusion`` is K x (K + X), rows reference, columns map, as in
    :func:`overall_accuracy`. A class's support is its whole row (every chip
    whose reference is that class, including those mapped to extra classes),
    recall its correct chips over that support, precision its correct chips over
    every chip mapped to it (its column).
    """
    confusion = _reference_rows(confusion)
    k = confusion.shape[0]
    diagonal = np.diag(confusion[:, :k]).astype(np.float64)
    mapped = confusion[:, :k].sum(axis=0).astype(np.float64)
    reference = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(diagonal, mapped, out=np.full_like(diagonal, np.nan), where=mapped > 0)
    recall = np.divide(diagonal, reference, out=np.full_like(diagonal, np.nan), where=reference > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.full_like(diagonal, np.nan), where=both > 0)
    f1 = np.where((both == 0) & ~np.isnan(both), 0.0, f1)
    return {"precision": precision, "recall": recall, "f1": f1, "support": reference}


def _number(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 6)


@dataclass
class Assessment:
    """The accuracy of a map against a reference.

    Attributes:
        classes: reference classes, in matrix order (map labels outside them are in ``extra_map_classes``).
        confusion: (K, K+X) chip counts, rows reference, columns map (X: map classes with no reference class).
        area_confusion: the same, summing chip areas (``area_unit``).
        chips: one row per scored chip (map label, its class, reference class, purity, cover, area).
        reference_area: area of each reference class under the scored chips (by fractions, not majority).
        area_unit: unit of the areas (``km2``, or ``CRS units^2`` without a metric CRS).
        extra_map_classes: map classes that are not reference classes (columns after the reference ones).
        unscored: chips left out (too little reference under them).
        details: inputs and options.
    """

    classes: list[str]
    confusion: np.ndarray
    area_confusion: np.ndarray
    chips: list[dict[str, Any]]
    reference_area: np.ndarray
    area_unit: str
    extra_map_classes: list[str] = field(default_factory=list)
    unscored: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def square(self) -> np.ndarray:
        """The K x K part over reference classes only.

        It leaves out the chips mapped to extra map classes, so its row sums are
        not the reference totals: every figure of the report is computed from the
        full ``confusion``, where those chips count as errors.
        """
        return self.confusion[:, : len(self.classes)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report.

        Every figure comes from the full K x (K + X) matrix: chips mapped to a
        label that is no reference class are errors, in the overall accuracy's
        total and in their reference class's support (so lowering its recall).
        """
        scores = per_class_scores(self.confusion)
        reference_totals = self.confusion.sum(axis=1)
        n = int(self.confusion.sum())
        majority = int(reference_totals.argmax()) if n else -1
        mapped_area = self.area_confusion.sum(axis=0)
        return {
            "chips_scored": n,
            "chips_unscored": self.unscored,
            "overall_accuracy": _number(overall_accuracy(self.confusion)),
            "kappa": _number(cohen_kappa(self.confusion)),
            "majority_class": self.classes[majority] if majority >= 0 else None,
            "majority_baseline_accuracy": _number(reference_totals.max() / n) if n else None,
            "mean_purity": _number(float(np.mean([c["purity"] for c in self.chips]))) if self.chips else None,
            "per_class": {
                name: {
                    "precision": _number(scores["precision"][k]),
                    "recall": _number(scores["recall"][k]),
                    "f1": _number(scores["f1"][k]),
                    "support": int(scores["support"][k]),
                    "mapped_chips": int(self.confusion[:, k].sum()),
                }
                for k, name in enumerate(self.classes)
            },
            "macro_f1": _number(float(np.nanmean(scores["f1"]))) if len(self.classes) else None,
            "area_weighted": {
                "unit": self.area_unit,
                "overall_accuracy": _number(overall_accuracy(self.area_confusion)),
                "mapped_area": {
                    name: _number(mapped_area[k]) for k, name in enumerate(self.classes + self.extra_map_classes)
                },
                "reference_area": {name: _number(self.reference_area[k]) for k, name in enumerate(self.classes)},
                "confusion_matrix": self.area_confusion.round(6).tolist(),
            },
            "confusion_matrix": {
                "rows_reference": self.classes,
                "columns_map": self.classes + self.extra_map_classes,
                "counts": self.confusion.tolist(),
            },
            **self.details,
        }

    def lines(self) -> list[str]:
        """A printed summary: headline figures, per-class table, confusion matrix."""
        report = self.to_dict()
        out = [
            f"chips scored: {report['chips_scored']} ({report['chips_unscored']} without enough reference), "
            f"mean purity {report['mean_purity']}",
            f"overall accuracy: {report['overall_accuracy']}  kappa: {report['kappa']}  "
            f"majority-class baseline: {report['majority_baseline_accuracy']} ({report['majority_class']})",
            f"area-weighted overall accuracy: {report['area_weighted']['overall_accuracy']}",
        ]
        width = max([len(c) for c in self.classes] + [5])
        out.append(f"  {'class':<{width}}  precision  recall     f1  support")
        for name, row in report["per_class"].items():
            cells = [("  -  " if row[k] is None else f"{row[k]:.3f}") for k in ("precision", "recall", "f1")]
            out.append(f"  {name:<{width}}  {cells[0]:>9}  {cells[1]:>6}  {cells[2]:>5}  {row['support']:>7}")
        out.append("confusion matrix (rows: reference, columns: map):")
        columns = self.classes + self.extra_map_classes
        cell = max(5, *(len(str(v)) for v in self.confusion.ravel()))
        out.append("  " + " " * width + "".join(f" {i:>{cell}}" for i in range(len(columns))))
        for k, name in enumerate(self.classes):
            out.append(f"  {name:<{width}}" + "".join(f" {v:>{cell}}" for v in self.confusion[k]))
        out.append("  columns: " + ", ".join(f"{i}={c}" for i, c in enumerate(columns)))
        return out

    def csv_text(self) -> str:
        """Per-class metrics, then the confusion matrix, as CSV."""
        report = self.to_dict()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            ["class", "precision", "recall", "f1", "support", "mapped_chips", "mapped_area", "reference_area"]
        )
        area = report["area_weighted"]
        for name, row in report["per_class"].items():
            writer.writerow(
                [name, row["precision"], row["recall"], row["f1"], row["support"], row["mapped_chips"],
                 area["mapped_area"][name], area["reference_area"][name]]
            )  # fmt: skip
        writer.writerow(["overall_accuracy", report["overall_accuracy"]])
        writer.writerow(["kappa", report["kappa"]])
        writer.writerow(["majority_baseline_accuracy", report["majority_baseline_accuracy"]])
        writer.writerow(["area_weighted_overall_accuracy", area["overall_accuracy"]])
        writer.writerow([])
        writer.writerow(["reference \\ map", *self.classes, *self.extra_map_classes])
        for name, row in zip(self.classes, self.confusion.tolist()):
            writer.writerow([name, *row])
        return buffer.getvalue()

    def chips_csv_text(self) -> str:
        """One row per scored chip."""
        buffer = io.StringIO()
        names = ["row", "col", "map_label", "map_class", "reference_class", "purity", "reference_cover", "area"]
        writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.chips)
        return buffer.getvalue()

    def write(self, path: str | os.PathLike[str], overwrite: bool = False) -> list[Path]:
        """Write ``PATH.json``, ``PATH.csv`` (per class + matrix) and ``PATH.chips.csv``, atomically.

        Raises:
            InputError: if one of them exists and ``overwrite`` is false.
        """
        base = Path(path)
        stem = base.with_suffix("") if base.suffix.lower() in (".json", ".csv") else base
        outputs = {
            stem.with_name(stem.name + ".json"): json.dumps(self.to_dict(), indent=2) + "\n",
            stem.with_name(stem.name + ".csv"): self.csv_text(),
            stem.with_name(stem.name + ".chips.csv"): self.chips_csv_text(),
        }
        for out in outputs:
            if out.exists() and not overwrite:
                raise InputError(f"output {out} already exists; pass --overwrite to replace it")
            if not out.parent.is_dir():
                raise InputError(f"output directory {out.parent} does not exist")
        for out, text in outputs.items():
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(out)
        return list(outputs)


def read_mapping(path: str | os.PathLike[str]) -> dict[str, str]:
    """``map label,reference class`` rows (CSV; a header row naming neither is skipped; '#' comments)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read mapping file {path}: {exc}") from None
    mapping: dict[str, str] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"mapping file {path} line {number}: expected 'map label,reference class'")
        key = normalise_label(row[0])
        if number == 1 and key in {"map", "map_label", "label", "map label"}:
            continue
        if key in mapping:
            raise InputError(f"mapping file {path} line {number}: map label {row[0].strip()!r} is mapped twice")
        mapping[key] = row[1].strip()
    if not mapping:
        raise InputError(f"mapping file {path} has no 'map label,reference class' rows")
    return mapping


def _read_map(path: Path) -> Any:
    import geopandas as gpd

    if not path.is_file():
        raise InputError(f"map not found: {path}; pass a GeoPackage written by geobimors map")
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        raise InputError(
            f"{path} is an embeddings store, not a map; label it first (geobimors map --from-embeddings {path} "
            "-l labels.txt -o map.gpkg) and assess that map"
        )
    try:
        chips = gpd.read_file(path, layer="chips")
    except Exception as exc:  # pyogrio raises several types
        raise InputError(
            f"cannot read the 'chips' layer of {path} ({str(exc).splitlines()[0]}); pass a geobimors map GeoPackage"
        ) from None
    if "label" not in chips.columns:
        raise InputError(f"{path} chips layer has no 'label' column; pass a GeoPackage written by geobimors map")
    return chips


def _areas(frame: Any) -> tuple[np.ndarray, str]:
    """Chip areas in km2 where the CRS allows, else in CRS units."""
    crs = frame.crs
    if crs is None:
        return np.asarray(frame.geometry.area, dtype=np.float64), "CRS units^2"
    if crs.is_geographic:
        frame = frame.to_crs(frame.estimate_utm_crs())
        crs = frame.crs
    factor = None
    for axis in crs.axis_info:
        if axis.unit_conversion_factor:
            factor = axis.unit_conversion_factor
            break
    area = np.asarray(frame.geometry.area, dtype=np.float64)
    if factor is None:
        return area, "CRS units^2"
    return area * factor**2 / 1e6, "km2"


def _raster_fractions(chips: Any, reference: Path, band: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per chip: class fractions of the reference pixels inside it (and the labelled share); classes as text."""
    import rasterio
    from rasterio.errors import WindowError
    from rasterio.features import geometry_mask, geometry_window

    from geobimors.vector.overlay import warn_assumed_crs

    try:
        ds = rasterio.open(reference)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot open reference raster {reference}: {str(exc).splitlines()[0]}") from None
    with ds:
        if not 1 <= band <= ds.count:
            raise InputError(f"reference raster {reference} has {ds.count} bands; --band {band} does not exist")
        if np.dtype(ds.dtypes[band - 1]).kind == "f":
            raise InputError(f"reference raster {reference} holds floats; give a classified raster (integer classes)")
        warn_assumed_crs((f"reference {reference}", ds.crs), ("the map", chips.crs))
        if chips.crs is not None and ds.crs is not None and chips.crs != ds.crs:
            chips = chips.to_crs(ds.crs)
        counts: list[dict[int, int]] = []
        totals = np.zeros(len(chips))
        for i, geometry in enumerate(chips.geometry):
            try:
                window = geometry_window(ds, [geometry])
            except WindowError:
                counts.append({})
                continue
            data = ds.read(band, window=window, masked=True)
            inside = ~geometry_mask([geometry], data.shape, ds.window_transform(window), all_touched=False)
            values = data.data[inside & ~np.ma.getmaskarray(data)]
            unique, occurrences = np.unique(values, return_counts=True)
            counts.append(dict(zip(unique.tolist(), occurrences.tolist())))
            totals[i] = inside.sum()
    codes = sorted({code for c in counts for code in c})
    fractions = np.zeros((len(chips), len(codes)))
    for i, c in enumerate(counts):
        for code, n in c.items():
            fractions[i, codes.index(code)] = n / totals[i] if totals[i] else 0.0
    return fractions, np.minimum(fractions.sum(axis=1), 1.0), [str(c) for c in codes]


def _polygonal(geometry: Any) -> Any:
    """The polygons of a repaired geometry (make_valid may add the lines of collapsed parts), or None."""
    import shapely

    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [p for p in shapely.get_parts(geometry) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


def _polygon_fractions(chips: Any, reference: Path, class_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import geopandas as gpd

    from geobimors.vector.overlay import class_coverage, warn_assumed_crs

    try:
        frame = gpd.read_file(reference)
    except Exception as exc:  # pyogrio raises several types
        raise InputError(f"cannot read reference polygons {reference}: {str(exc).splitlines()[0]}") from None
    if class_column not in frame.columns:
        raise InputError(
            f"reference {reference} has no {class_column!r} column; pass --class-column (columns: "
            f"{[c for c in frame.columns if c != 'geometry']})"
        )
    frame = frame[frame[class_column].notna() & frame.geometry.notna() & ~frame.geometry.is_empty]
    invalid = ~frame.geometry.is_valid
    if invalid.any():
        # Hand-drawn references often hold self-intersecting rings ("bow ties"); GEOS cannot overlay
        # them, and repairing them keeps every area the digitiser enclosed.
        count = int(invalid.sum())
        warn(f"{count} reference polygon(s) of {reference} are not valid geometries; repaired with make_valid")
        frame = frame.set_geometry(frame.geometry.make_valid().apply(_polygonal))
        frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    warn_assumed_crs((f"reference {reference}", frame.crs), ("the map", chips.crs))
    if chips.crs is not None and frame.crs is not None and chips.crs != frame.crs:
        frame = frame.to_crs(chips.crs)
    names = sorted({str(v) for v in frame[class_column]})
    classes = np.array([names.index(str(v)) for v in frame[class_column]], dtype=np.int64)
    coverage = class_coverage(np.asarray(chips.geometry.values), np.asarray(frame.geometry.values), classes, len(names))
    return coverage.fractions, coverage.covered, names


def assess(
    map_path: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    mapping: str | os.PathLike[str] | dict[str, str] | None = None,
    class_column: str = "label",
    band: int = 1,
    min_purity: float = 0.0,
    min_cover: float = DEFAULT_MIN_COVER,
) -> Assessment:
    """Score a ``geobimors map`` GeoPackage against a reference raster or reference polygons.

    Args:
        map_path: the map (its ``chips`` layer).
        reference: a classified raster (integer classes) or a vector file of labelled polygons.
        mapping: ``map label,reference class`` CSV (or a dict); without it, map labels
            must equal reference class names (ignoring case and spaces). Raster
            classes are their pixel values as text (``"1"``).
        class_column: class attribute of reference polygons.
        band: band of the reference raster.
        min_purity: score only chips whose reference majority covers at least
            this share of their labelled part (0: every chip, by majority).
        min_cover: score only chips with at least this share under the reference.

    Returns:
        The assessment (print :meth:`Assessment.lines`, save with :meth:`Assessment.write`).
    """
    if not 0.0 <= min_purity <= 1.0 or not 0.0 < min_cover <= 1.0:
        raise InputError("--min-purity must be in [0, 1] and --min-cover in (0, 1]")
    map_path, reference = Path(map_path), Path(reference)
    if not reference.exists():
        raise InputError(f"reference not found: {reference}; pass a classified raster or labelled polygons")
    chips = _read_map(map_path)
    chips = chips[chips["label"].notna()].reset_index(drop=True)
    if chips.empty:
        raise InputError(
            f"map {map_path} has no classified chip; nothing to assess (see its summary: --nodata, --min-valid)"
        )
    if reference.suffix.lower() in RASTER_SUFFIXES:
        fractions, cover, classes = _raster_fractions(chips, reference, band)
        kind = "raster"
    else:
        fractions, cover, classes = _polygon_fractions(chips, reference, class_column)
        kind = "polygons"
    if not classes:
        raise InputError(f"no reference class lies under the chips of {map_path}; check that both cover one area")
    given = mapping if isinstance(mapping, dict) or mapping is None else read_mapping(mapping)
    translate = {normalise_label(k): v for k, v in (given or {}).items()}
    by_key = {normalise_label(c): c for c in classes}
    map_labels = [str(v) for v in chips["label"]]
    mapped: list[str] = []
    missing: set[str] = set()
    for label in map_labels:
        key = normalise_label(label)
        if given is not None:
            if key not in translate:
                missing.add(label)
                mapped.append(label)
                continue
            target = translate[key]
        else:
            target = label
        mapped.append(by_key.get(normalise_label(target), target))
    if missing:
        raise InputError(
            f"mapping file has no row for map label(s) {', '.join(sorted(repr(m) for m in missing)[:5])}; "
            "add 'map label,reference class' rows"
        )
    extra = sorted({m for m in mapped if m not in classes})
    if given is None and len(extra) == len(set(mapped)):
        raise InputError(
            f"no map label is a reference class (map: {', '.join(sorted(set(map_labels))[:5])}; reference: "
            f"{', '.join(classes[:5])}); pass --mapping with 'map label,reference class' rows"
        )
    if kind == "raster" and given is not None:
        # Raster classes are codes: name each after the one map label mapped to it ("2: forest").
        sources: dict[str, list[str]] = {}
        for key, target in translate.items():
            sources.setdefault(by_key.get(normalise_label(target), target), []).append(key)
        named = {c: f"{c}: {sources[c][0]}" if len(sources.get(c, [])) == 1 else c for c in classes}
        classes = [named[c] for c in classes]
        mapped = [named.get(m, m) for m in mapped]
    areas, unit = _areas(chips)
    columns = classes + extra
    confusion = np.zeros((len(classes), len(columns)), dtype=np.int64)
    area_confusion = np.zeros((len(classes), len(columns)))
    reference_area = np.zeros(len(classes))
    purity = np.divide(fractions.max(axis=1), cover, out=np.zeros(len(cover)), where=cover > 0)
    majority = fractions.argmax(axis=1)
    rows: list[dict[str, Any]] = []
    unscored = 0
    for i in range(len(chips)):
        if cover[i] < min_cover or purity[i] < min_purity:
            unscored += 1
            continue
        truth, predicted = int(majority[i]), columns.index(mapped[i])
        confusion[truth, predicted] += 1
        area_confusion[truth, predicted] += areas[i]
        reference_area += areas[i] * fractions[i]
        rows.append(
            {
                "row": int(chips["row"][i]) if "row" in chips.columns else i,
                "col": int(chips["col"][i]) if "col" in chips.columns else -1,
                "map_label": map_labels[i],
                "map_class": mapped[i],
                "reference_class": classes[truth],
                "purity": round(float(purity[i]), 4),
                "reference_cover": round(float(cover[i]), 4),
                "area": float(areas[i]),
            }
        )
    if not rows:
        raise InputError(
            f"no chip of {map_path} has enough reference under it (--min-cover {min_cover}, --min-purity "
            f"{min_purity}); check that the map and the reference cover one area"
        )
    details = {
        "map": str(map_path),
        "reference": str(reference),
        "reference_kind": kind,
        "mapping": None if mapping is None else (str(mapping) if not isinstance(mapping, dict) else "dict"),
        "min_purity": min_purity,
        "min_cover": min_cover,
    }
    return Assessment(classes, confusion, area_confusion, rows, reference_area, unit, extra, unscored, details)

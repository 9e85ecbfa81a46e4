"""Chip records to GeoPackage: exact chip polygons, optional regions, style, atomic write."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import shapely
from affine import Affine
from rasterio.crs import CRS

from geobimors.errors import OutputError, RunError
from geobimors.files import check_output_file, too_large_message
from geobimors.raster.grid import window_corners
from geobimors.vector.style import categorized_qml, write_layer_styles

if TYPE_CHECKING:  # geopandas, pandas and pyogrio are imported when the first frame is made:
    import geopandas as gpd  # a run classifies its first chips without them
    import pandas as pd

CHIPS_LAYER = "chips"
REGIONS_LAYER = "regions"
FAILED_LAYER = "failed"
# Columns of the records that go into the chips layer, besides the label/score columns.
_CHIP_COLUMNS = ("row", "col", "valid_fraction")


def chip_polygons(transform: Affine, windows: np.ndarray) -> np.ndarray:
    """Exact footprints of pixel windows as shapely polygons (rotation and shear included).

    Args:
        transform: pixel-to-CRS transform of the scene.
        windows: (N, 4) col_off, row_off, width, height.
    """
    xs, ys = window_corners(transform, windows)
    return shapely.polygons(np.stack([xs, ys], axis=-1))


def records_to_frame(
    table: pa.Table, transform: Affine, crs: CRS | None, label_columns: Sequence[str], extra: dict[str, str]
) -> gpd.GeoDataFrame:
    """Chip polygons with their labels from stored records (classified chips only).

    Args:
        table: records (see :func:`geobimors.run.store.result_table`).
        transform: scene transform.
        crs: scene CRS.
        label_columns: label and score column names in output order.
        extra: constant attributes added to every row (e.g. the model id).
    """
    frame = table.to_pandas()
    frame = frame[frame["classified"]].reset_index(drop=True)
    return _frame(frame, transform, crs, label_columns, extra)


def failed_to_frame(table: pa.Table, transform: Affine, crs: CRS | None) -> gpd.GeoDataFrame:
    """Footprints of chips whose windows could not be read, with the error."""
    frame = table.to_pandas()
    frame = frame[frame["failed"]].reset_index(drop=True)
    return _frame(frame, transform, crs, ["error"], {})


def _frame(
    frame: pd.DataFrame, transform: Affine, crs: CRS | None, label_columns: Sequence[str], extra: dict[str, str]
) -> gpd.GeoDataFrame:
    import geopandas as gpd
    import pandas as pd

    windows = frame[["col_off", "row_off", "width", "height"]].to_numpy()
    data = {name: frame[name] for name in label_columns}
    data.update({name: frame[name] for name in _CHIP_COLUMNS})
    for name, value in extra.items():
        data[name] = pd.Series([value] * len(frame), dtype=object)
    return gpd.GeoDataFrame(data, geometry=chip_polygons(transform, windows), crs=crs)


def check_output(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check that an output GeoPackage can be written, before any work is done.

    Raises:
        OutputError: if the directory is missing or read-only, the path is a
            directory or not ``.gpkg``, or the file exists without ``overwrite``.
    """
    out = Path(path).expanduser()
    if out.suffix.lower() != ".gpkg":
        raise OutputError(f"output {out} must be a GeoPackage with the .gpkg extension")
    return check_output_file(out, overwrite, ".gpkg", "-o path")


class GeoPackageWriter:
    """Writes label layers to a temporary GeoPackage and renames it into place.

    Readers never see a half-written file: the output appears complete, or not
    at all. On failure the temporary file is removed.

    Args:
        output: final path (checked with :func:`check_output`).
        overwrite: replace an existing output.
        metadata: key/value pairs stored as layer metadata (provenance).
        main_layer: the layer created even when empty and counted in ``n_features``
            (``chips``; ``hits`` for search results).
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        overwrite: bool,
        metadata: dict[str, str],
        main_layer: str = CHIPS_LAYER,
    ) -> None:
        self.output = check_output(output, overwrite)
        self.main_layer = main_layer
        self.overwrite = overwrite
        self.metadata = metadata
        self.tmp = self.output.with_name(f".{self.output.stem}.{os.getpid()}.tmp.gpkg")
        self.n_features = 0
        self._created: set[str] = set()

    def __enter__(self) -> GeoPackageWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.discard()

    def discard(self) -> None:
        """Remove the temporary file (and its SQLite side files)."""
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(str(self.tmp) + suffix).unlink(missing_ok=True)

    def append(self, frame: gpd.GeoDataFrame, layer: str | None = None) -> None:
        """Append features to a layer (the main layer is created by the first call, even when empty)."""
        layer = layer or self.main_layer
        if len(frame) == 0 and (layer in self._created or layer != self.main_layer):
            return
        self._write(frame, layer, append=layer in self._created)
        self._created.add(layer)
        if layer == self.main_layer:
            self.n_features += len(frame)

    def _write(self, frame: gpd.GeoDataFrame, layer: str, append: bool) -> None:
        import pyogrio

        try:
            pyogrio.write_dataframe(
                frame,
                self.tmp,
                layer=layer,
                driver="GPKG",
                append=append,
                geometry_type="Polygon",
                layer_metadata=None if append else self.metadata,
            )
        except Exception as exc:  # pyogrio raises several types; all mean the write failed
            raise _write_error(self.output, exc, self.tmp) from exc

    def write_table(self, frame: pd.DataFrame, layer: str) -> None:
        """Write (or append to) a table without geometry (e.g. ``failed_scenes``), created even when empty."""
        import pyogrio

        try:
            pyogrio.write_dataframe(frame, self.tmp, layer=layer, driver="GPKG", append=layer in self._created)
        except Exception as exc:  # pyogrio raises several types; all mean the write failed
            raise _write_error(self.output, exc, self.tmp) from exc
        self._created.add(layer)

    def finish(self, labels: Sequence[str], regions: bool = False) -> Path:
        """Add the regions layer and styles, then move the file into place.

        Args:
            labels: label names, in legend order.
            regions: also write a ``regions`` layer of dissolved same-label chips.

        Returns:
            The output path.
        """
        styles = [(CHIPS_LAYER, categorized_qml(labels))]
        if regions:
            import pyogrio

            chips = pyogrio.read_dataframe(self.tmp, layer=CHIPS_LAYER, columns=["label"])
            self._write(dissolve_regions(chips), REGIONS_LAYER, append=False)
            styles.append((REGIONS_LAYER, categorized_qml(labels, outline=False)))
        return self.finish_with_styles(styles)

    def finish_with_styles(self, styles: Sequence[tuple[str, str]]) -> Path:
        """Store the given (layer, QML) default styles, then move the file into place.

        Returns:
            The output path.
        """
        try:
            write_layer_styles(str(self.tmp), styles)
            if self.output.exists() and not self.overwrite:
                raise OutputError(f"output {self.output} appeared while the run was writing; not replacing it")
            os.replace(self.tmp, self.output)
        except OSError as exc:
            raise _write_error(self.output, exc, self.tmp) from exc
        return self.output


def dissolve_regions(chips: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Merge adjacent chips with the same label into region polygons.

    Returns:
        One row per connected region: label, number of chips and area (CRS units).
    """
    import geopandas as gpd

    if len(chips) == 0:
        return gpd.GeoDataFrame({"label": [], "area": []}, geometry=[], crs=chips.crs)
    merged = chips[["label", "geometry"]].dissolve(by="label", as_index=False)
    parts = merged.explode(index_parts=False, ignore_index=True)
    parts["area"] = parts.geometry.area
    return parts[["label", "area", "geometry"]]


def _write_error(output: Path, exc: BaseException, written: Path) -> Exception:
    if isinstance(exc, OutputError):
        return exc
    too_large = too_large_message(output, exc, written, "nothing was written there and finished batches are kept")
    if too_large is not None:
        return RunError(too_large)
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text or "disk is full" in text:
        return RunError(
            f"disk full while writing {output}; nothing was written there. Free space and re-run the same "
            "command: finished batches are kept and will not be recomputed"
        )
    return RunError(f"could not write {output}: {text.splitlines()[0] if text else type(exc).__name__}")

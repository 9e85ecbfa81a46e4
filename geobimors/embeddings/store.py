"""The embeddings store: one GeoParquet 1.1 file of chip embeddings per scene.

One row per valid chip of a scene's chip grid, in row-major grid order: a
stable ``chip_id``, the grid position, the footprint (WKB polygon in the scene
CRS, a ``bbox`` covering struct, the centre in EPSG:4326 with the Major TOM
column names), the L2-normalised pooled image embedding and, optionally, the
chip's caption and its caption-encoder embedding. The Parquet key-value
metadata carries ``geo`` (GeoParquet 1.1, PROJJSON CRS, bbox covering) and
``geobimors`` (model and weights fingerprint, chip settings, grid), enough to
refuse a query or a head made for another model.

:class:`StoreWriter` appends row groups to a temporary file as batches arrive
and renames it into place when closed (the Parquet footer is written last, so
a half-written file is never readable). :func:`open_store` validates a file and
returns an :class:`EmbeddingStore` that streams row groups (memory stays flat
with store size).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from affine import Affine
from rasterio.crs import CRS

from geobimors._version import __version__
from geobimors.errors import InputError, ModelError, OutputError, RunError
from geobimors.files import check_output_file, too_large_message

FORMAT_VERSION = 1
GEO_KEY = b"geo"
META_KEY = b"geobimors"
EMBEDDING = "embedding"
CAPTION = "caption"
CAPTION_EMBEDDING = "caption_embedding"
# Fixed-size vector columns: written without dictionary pages.
VECTOR_COLUMNS = frozenset({EMBEDDING, CAPTION_EMBEDDING})
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
DEFAULT_ROW_GROUP_SIZE = 16_384
# Columns every store has, in this order (see docs/embeddings.md).
BASE_COLUMNS = (
    "chip_id",
    "scene",
    "row",
    "col",
    "pixel_bbox",
    "geometry",
    "bbox",
    "centre_lat",
    "centre_lon",
    "valid_fraction",
    EMBEDDING,
)
_BBOX_TYPE = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())])


@dataclass(frozen=True)
class StoreMeta:
    """The ``geobimors`` metadata of a store: what made the embeddings and on which grid.

    Attributes:
        model: model name as given to ``--model``.
        model_fingerprint: fingerprint of the model's weights (:attr:`ClipModel.fingerprint`).
        embedding_dim: width D of the ``embedding`` column.
        dtype: ``float16`` or ``float32`` (of both embedding columns).
        chip_size: chip size the model saw, in output pixels (width, height).
        gsd: ground resolution of the chips in m/px (``None``: the scene's own).
        overlap: overlap between neighbouring chips in scene pixels (x, y).
        bands: 1-based scene bands used as R, G, B.
        scaling: 8-bit scaling: ``{"method": ..., "low": [...], "high": [...]}`` or ``None`` (8-bit data, unchanged).
        normalisation: the model's image normalisation ``{"mean": [...], "std": [...]}``.
        grid: the chip grid: ``crs`` (WKT or ``None``), ``scene_transform`` (6 numbers), scene
            ``width``/``height`` in pixels, ``chip`` window (w, h) and ``step`` (x, y) in scene pixels,
            ``n_rows``/``n_cols``, and ``transform``: the transform of a raster with one pixel per chip
            step (row ``r``, column ``c`` of the grid is pixel ``(r, c)``).
        scene: the scene path or URL as given.
        complete: every batch of the grid is in the file.
        captioner: captioner name when captions are stored.
        caption_model: the caption encoder's name when caption embeddings are stored.
        caption_dim: width E of ``caption_embedding`` (``None`` without it).
        precision: autocast precision of the image pass (``fp32``, ``bf16``, ``fp16``).
        nodata: nodata value given for the scene (``None``: the scene's own masks).
        min_valid: smallest valid-pixel fraction of a stored chip.
        tta: test-time augmentation: each embedding is the mean over this many turned and mirrored
            views of its chip (1: the chip as read).
        n_chips: number of chips in the grid (valid or not).
        format_version: store format version.
        geobimors_version: version of geobimors that wrote the store.
        extra: free-form additions (further optional columns a head needs are described here).
    """

    model: str
    model_fingerprint: str
    embedding_dim: int
    dtype: str
    chip_size: tuple[int, int]
    gsd: float | None
    overlap: tuple[int, int]
    bands: tuple[int, ...]
    scaling: dict[str, Any] | None
    normalisation: dict[str, Any]
    grid: dict[str, Any]
    scene: str
    complete: bool = True
    captioner: str | None = None
    caption_model: str | None = None
    caption_dim: int | None = None
    precision: str = "fp32"
    nodata: float | None = None
    min_valid: float = 0.5
    tta: int = 1
    n_chips: int = 0
    format_version: int = FORMAT_VERSION
    geobimors_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def crs(self) -> CRS | None:
        """The scene CRS (``None`` for scenes in pixel coordinates)."""
        wkt = self.grid.get("crs")
        return CRS.from_user_input(wkt) if wkt else None

    @property
    def scene_transform(self) -> Affine:
        """Pixel-to-CRS transform of the scene."""
        return Affine(*self.grid["scene_transform"][:6])

    @property
    def grid_transform(self) -> Affine:
        """Transform of a raster with one pixel per chip step (for similarity rasters)."""
        return Affine(*self.grid["transform"][:6])

    @property
    def has_captions(self) -> bool:
        """True when the store has a ``caption`` column."""
        return self.captioner is not None

    @property
    def has_caption_embeddings(self) -> bool:
        """True when the store has a ``caption_embedding`` column."""
        return self.caption_dim is not None

    def settings_key(self) -> str:
        """Hash of the chip settings and weights that identify a chip's embedding (part of ``chip_id``)."""
        payload = {
            "model_fingerprint": self.model_fingerprint,
            "chip_size": list(self.chip_size),
            "gsd": self.gsd,
            "overlap": list(self.overlap),
            "bands": list(self.bands),
            "scaling": self.scaling,
            "grid": {k: self.grid.get(k) for k in ("scene_transform", "chip", "step")},
            "precision": self.precision,
            "nodata": self.nodata,
        }
        if self.tta != 1:  # added only when set: stores without it keep their chip ids
            payload["tta"] = self.tta
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def to_json(self) -> str:
        """The metadata as JSON (the ``geobimors`` key of the file)."""
        return json.dumps(asdict(self), sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str | bytes) -> StoreMeta:
        """Parse the ``geobimors`` metadata (unknown keys go to :attr:`extra`).

        Raises:
            ValueError: if the JSON is invalid or required fields are missing.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("geobimors metadata is not a JSON object")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        extra = dict(values.pop("extra", None) or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        for name in ("chip_size", "overlap", "bands"):
            if name in values and values[name] is not None:
                values[name] = tuple(int(v) for v in values[name])
        return cls(**values, extra=extra)

    def describe(self) -> str:
        """One line for summaries and messages."""
        return (
            f"model {self.model} (weights {self.model_fingerprint}), {self.embedding_dim}-d {self.dtype}, "
            f"chips {self.chip_size[0]} x {self.chip_size[1]} px"
            + (f" at {self.gsd:g} m/px" if self.gsd else "")
            + f", bands {','.join(map(str, self.bands))}"
            + (f", mean of {self.tta} turned/mirrored views" if self.tta != 1 else "")
        )


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def store_schema(meta: StoreMeta) -> pa.Schema:
    """The Arrow schema of a store with this metadata (column order as documented)."""
    dtype = _arrow_dtype(meta.dtype)
    columns: list[tuple[str, pa.DataType]] = [
        ("chip_id", pa.string()),
        ("scene", pa.string()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("pixel_bbox", pa.list_(pa.int32(), 4)),
        ("geometry", pa.binary()),
        ("bbox", _BBOX_TYPE),
        ("centre_lat", pa.float64()),
        ("centre_lon", pa.float64()),
        ("valid_fraction", pa.float32()),
        (EMBEDDING, pa.list_(dtype, meta.embedding_dim)),
    ]
    if meta.has_captions:
        columns.append((CAPTION, pa.string()))
    if meta.caption_dim is not None:
        columns.append((CAPTION_EMBEDDING, pa.list_(dtype, meta.caption_dim)))
    return pa.schema(columns)


def _arrow_dtype(dtype: str) -> pa.DataType:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise InputError(f"--dtype must be float16 or float32, got {dtype!r}") from None


def geo_metadata(crs: CRS | None, bbox: Sequence[float] | None) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata for the ``geometry`` column.

    Args:
        crs: the scene CRS, written as PROJJSON (``None``: unknown CRS, written as JSON null).
        bbox: xmin, ymin, xmax, ymax of all geometries (``None`` when the file is empty).
    """
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": _projjson(crs),
        "covering": {
            "bbox": {
                "xmin": ["bbox", "xmin"],
                "ymin": ["bbox", "ymin"],
                "xmax": ["bbox", "xmax"],
                "ymax": ["bbox", "ymax"],
            }
        },
    }
    if bbox is not None and all(np.isfinite(bbox)):
        column["bbox"] = [float(v) for v in bbox]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def _projjson(crs: CRS | None) -> dict[str, Any] | None:
    if crs is None:
        return None
    from pyproj import CRS as ProjCRS

    return dict(ProjCRS.from_wkt(crs.to_wkt()).to_json_dict())


def chip_ids(scene: str, settings_key: str, windows: np.ndarray) -> list[str]:
    """Stable chip ids: 16 hex characters of SHA-256 over scene, settings and footprint window.

    The same scene cut with the same settings and model weights gives the same
    ids in every run; any change to them gives other ids.
    """
    prefix = f"{scene}\x00{settings_key}\x00".encode()
    return [
        hashlib.sha256(prefix + ",".join(str(int(v)) for v in window).encode()).hexdigest()[:16]
        for window in np.asarray(windows).reshape(-1, 4)
    ]


def chips_table(
    meta: StoreMeta,
    rows: np.ndarray,
    cols: np.ndarray,
    windows: np.ndarray,
    valid_fraction: np.ndarray,
    embeddings: np.ndarray,
    captions: Sequence[str] | None = None,
    caption_embeddings: np.ndarray | None = None,
) -> pa.Table:
    """Store rows for chips of the grid described by ``meta``.

    Args:
        meta: the store metadata (scene, grid, dtype, widths).
        rows: (N,) grid rows.
        cols: (N,) grid columns.
        windows: (N, 4) footprint windows in scene pixels: col_off, row_off, width, height.
        valid_fraction: (N,) valid-pixel fraction of each chip.
        embeddings: (N, D) L2-normalised image embeddings.
        captions: N captions (when the store has captions).
        caption_embeddings: (N, E) caption embeddings (when the store has them).

    Returns:
        A table with :func:`store_schema`.
    """
    import shapely

    from geobimors.raster.grid import window_corners

    n = len(rows)
    windows = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    xs, ys = window_corners(meta.scene_transform, windows)
    polygons = shapely.polygons(np.stack([xs, ys], axis=-1))
    lon, lat = _centres_lonlat(meta.crs, xs.mean(axis=1), ys.mean(axis=1))
    pixel_bbox = np.stack(
        [windows[:, 0], windows[:, 1], windows[:, 0] + windows[:, 2], windows[:, 1] + windows[:, 3]], axis=1
    ).astype(np.int32)
    schema = store_schema(meta)
    columns: list[pa.Array] = [
        pa.array(chip_ids(meta.scene, meta.settings_key(), windows), pa.string()),
        pa.array([meta.scene] * n, pa.string()),
        pa.array(np.asarray(rows, dtype=np.int32)),
        pa.array(np.asarray(cols, dtype=np.int32)),
        pa.FixedSizeListArray.from_arrays(pa.array(pixel_bbox.ravel()), 4),
        pa.array(shapely.to_wkb(polygons), pa.binary()),
        pa.StructArray.from_arrays(
            [pa.array(xs.min(axis=1)), pa.array(ys.min(axis=1)), pa.array(xs.max(axis=1)), pa.array(ys.max(axis=1))],
            names=["xmin", "ymin", "xmax", "ymax"],
        ),
        pa.array(lat, pa.float64()),
        pa.array(lon, pa.float64()),
        pa.array(np.asarray(valid_fraction, dtype=np.float32)),
        _fixed_list(embeddings, meta.dtype, meta.embedding_dim, EMBEDDING),
    ]
    if meta.has_captions:
        if captions is None or len(captions) != n:
            raise ValueError("a store with captions needs one caption per chip")
        columns.append(pa.array(list(captions), pa.string()))
    if meta.caption_dim is not None:
        if caption_embeddings is None:
            raise ValueError("a store with caption embeddings needs them for every chip")
        columns.append(_fixed_list(caption_embeddings, meta.dtype, meta.caption_dim, CAPTION_EMBEDDING))
    return pa.Table.from_arrays(columns, schema=schema)


def _fixed_list(values: np.ndarray, dtype: str, width: int, name: str) -> pa.FixedSizeListArray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{name} must be (N, {width}), got {array.shape}")
    flat = np.ascontiguousarray(array, dtype=np.float16 if dtype == "float16" else np.float32).ravel()
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


def _centres_lonlat(crs: CRS | None, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude of points (NaN without a CRS)."""
    if crs is None or len(x) == 0:
        nan = np.full(len(x), np.nan)
        return nan, nan.copy()
    if crs == CRS.from_epsg(4326):
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    from rasterio.warp import transform

    lon, lat = transform(crs, CRS.from_epsg(4326), list(map(float, x)), list(map(float, y)))
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def check_store_output(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check that a store can be written at ``path`` before any work is done.

    Raises:
        OutputError: if the directory is missing or read-only, the path is a directory
            or not ``.parquet``, or the file exists without ``overwrite``.
    """
    out = Path(path).expanduser()
    if out.suffix.lower() not in (".parquet", ".geoparquet"):
        raise OutputError(f"embeddings store {out} must be a GeoParquet file with the .parquet extension")
    return check_output_file(out, overwrite, ".parquet")


class StoreWriter:
    """Writes a store: row groups appended to a temporary file, renamed into place on :meth:`close`.

    Rows are buffered up to ``row_group_size`` and written as one row group, so
    memory holds at most one row group whatever the scene size. On an error
    (or :meth:`discard`) the temporary file is removed: nothing is left behind.

    Args:
        path: final ``.parquet`` path.
        meta: the store metadata (``complete`` is set on close).
        bbox: xmin, ymin, xmax, ymax of all footprints, for the ``geo`` metadata
            (the Parquet schema metadata is written before the rows).
        overwrite: replace an existing file.
        row_group_size: rows per row group.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: StoreMeta,
        bbox: Sequence[float] | None = None,
        overwrite: bool = False,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    ) -> None:
        self.path = check_store_output(path, overwrite)
        self.meta = replace(meta, complete=True)
        self.schema = store_schema(self.meta).with_metadata(
            {
                GEO_KEY: json.dumps(geo_metadata(self.meta.crs, bbox)).encode(),
                META_KEY: self.meta.to_json().encode(),
            }
        )
        self.row_group_size = row_group_size
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.n_rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._sink = open(self.tmp, "wb")  # noqa: SIM115 - our own file object: closed for sure after a failed write
        try:
            self._writer = pq.ParquetWriter(
                self._sink,
                self.schema,
                compression="zstd",
                # Vectors are written plain: a dictionary of float16 values saves nothing and decodes
                # ~4x slower (pyarrow picks one for small row groups). BYTE_STREAM_SPLIT would be a
                # little smaller, but DuckDB cannot read it on float16 columns.
                use_dictionary=[name for name in self.schema.names if name not in VECTOR_COLUMNS],
                write_statistics=["row", "col", "bbox"],
            )
        except BaseException:
            self.discard()
            raise

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.discard()

    def write(self, table: pa.Table) -> None:
        """Append rows (a table made by :func:`chips_table`); full row groups go to disk."""
        if table.num_rows == 0:
            return
        self._pending.append(table.select(self.schema.names).cast(self.schema.remove_metadata()))
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_size:
            merged = pa.concat_tables(self._pending)
            self._write_group(merged.slice(0, self.row_group_size))
            rest = merged.slice(self.row_group_size)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _write_group(self, table: pa.Table) -> None:
        try:
            self._writer.write_table(table, row_group_size=table.num_rows)
        except OSError as exc:
            error = _write_error(self.path, exc, self.tmp)
            self.discard()
            raise error from exc
        self.n_rows += table.num_rows

    def close(self) -> Path:
        """Write the remaining rows and the footer, and rename the file into place."""
        if self._pending_rows:
            self._write_group(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0
        try:
            self._writer.close()
            self._sink.flush()
            os.fsync(self._sink.fileno())
            self._sink.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            error = _write_error(self.path, exc, self.tmp)
            self.discard()
            raise error from exc
        return self.path

    def discard(self) -> None:
        """Remove the temporary file."""
        with contextlib.suppress(Exception):  # the writer may be half-built or already failed
            self._writer.close()
        with contextlib.suppress(Exception):
            self._sink.close()
        self.tmp.unlink(missing_ok=True)


def _write_error(path: Path, exc: OSError, written: Path) -> RunError:
    too_large = too_large_message(path, exc, written, "run the same command again once there is room")
    if too_large is not None:
        return RunError(too_large)
    full = exc.errno == errno.ENOSPC or "No space left" in str(exc)
    return RunError(
        f"{'disk full' if full else 'cannot write'} while writing embeddings store {path} "
        f"({exc.strerror or exc}); free space and run the same command again"
    )


def write_store(
    path: str | os.PathLike[str], meta: StoreMeta, tables: Sequence[pa.Table], overwrite: bool = False
) -> Path:
    """Write a whole store from tables at once (the bbox is computed from them)."""
    with StoreWriter(path, meta, bbox=tables_bbox(tables), overwrite=overwrite) as writer:
        for table in tables:
            writer.write(table)
        return writer.close()


def tables_bbox(tables: Sequence[pa.Table] | Iterator[pa.Table]) -> tuple[float, float, float, float] | None:
    """Bounding box of the ``bbox`` column of store tables (``None`` when there are no rows)."""
    box = [np.inf, np.inf, -np.inf, -np.inf]
    for table in tables:
        if table.num_rows == 0:
            continue
        bbox = table.column("bbox").combine_chunks()
        box[0] = min(box[0], float(np.min(bbox.field("xmin"))))
        box[1] = min(box[1], float(np.min(bbox.field("ymin"))))
        box[2] = max(box[2], float(np.max(bbox.field("xmax"))))
        box[3] = max(box[3], float(np.max(bbox.field("ymax"))))
    return (box[0], box[1], box[2], box[3]) if np.isfinite(box).all() else None


# ----------------------------------------------------------------------------------------------- reading


class EmbeddingStore:
    """A validated store, read in streamed row groups.

    Attributes:
        path: the file.
        meta: its ``geobimors`` metadata.
        geo: its ``geo`` (GeoParquet) metadata.
        n_rows: number of chips stored.
        schema: the Arrow schema.
    """

    def __init__(self, path: Path, parquet: pq.ParquetFile, meta: StoreMeta, geo: dict[str, Any]) -> None:
        self.path = path
        self._file = parquet
        self.meta = meta
        self.geo = geo
        self.n_rows = int(parquet.metadata.num_rows)
        self.schema: pa.Schema = parquet.schema_arrow

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, {self.n_rows} chips, {self.meta.describe()})"

    @property
    def columns(self) -> list[str]:
        """Column names in file order."""
        return list(self.schema.names)

    @property
    def n_row_groups(self) -> int:
        """Number of Parquet row groups."""
        return int(self._file.num_row_groups)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        """Stream the rows as record batches (one row group at a time in memory).

        Args:
            columns: columns to read (default: all).
            batch_size: rows per batch at most.

        Raises:
            InputError: for an unknown column or a corrupt row group.
        """
        if columns is not None:
            missing = [c for c in columns if c not in self.schema.names]
            if missing:
                raise InputError(
                    f"embeddings store {self.path} has no column {missing[0]!r} (it has {', '.join(self.schema.names)})"
                )
        try:
            # One reader per row group: a single reader over the whole file keeps memory that grows
            # with the file (0.39 GB at 100k rows, 1.27 GB at 1M, measured); per row group it stays
            # at about 0.3 GB for both (docs/search.md).
            for group in range(self._file.num_row_groups):
                yield from self._file.iter_batches(
                    batch_size=batch_size, row_groups=[group], columns=list(columns) if columns else None
                )
        except (OSError, pa.ArrowException) as exc:
            raise InputError(
                f"embeddings store {self.path} is damaged ({_first_line(exc)}); re-create it with geobimors embed"
            ) from exc

    @staticmethod
    def embeddings_of(batch: pa.RecordBatch | pa.Table, column: str = EMBEDDING) -> np.ndarray:
        """The (N, D) float32 embeddings of a batch's fixed-size-list column."""
        array = batch.column(column)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        width = array.type.list_size
        values = array.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float32).reshape(-1, width)

    def check_model(self, model: str, fingerprint: str) -> None:
        """Refuse to use the store with another model's weights.

        Raises:
            ModelError: naming the store's model and the given one.
        """
        if fingerprint != self.meta.model_fingerprint:
            raise ModelError(
                f"embeddings store {self.path} was made with model {self.meta.model} "
                f"(weights {self.meta.model_fingerprint}), not {model} (weights {fingerprint}); "
                f"use --model {self.meta.model}, or re-embed the scene with geobimors embed --model {model}"
            )

    @property
    def index_base(self) -> Path:
        """Where the store's index lives (``STORE`` -> ``STORE.index``)."""
        return self.path

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the file's content (for the index's freshness)."""
        from geobimors.embeddings.index import store_fingerprint

        return store_fingerprint(self.path, self.n_rows)

    def take_rows(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Rows at the given positions (file order), reading only the row groups that hold them."""
        file = pq.ParquetFile(self.path)
        names = [c for c in columns if c in self.columns]
        if len(positions) == 0:
            return self.schema.empty_table().select(names)
        starts = np.cumsum([0] + [file.metadata.row_group(i).num_rows for i in range(file.metadata.num_row_groups)])
        unique = np.unique(positions)
        groups = np.unique(np.searchsorted(starts, unique, side="right") - 1)
        parts = []
        for group in groups:
            in_group = unique[(unique >= starts[group]) & (unique < starts[group + 1])]
            table = file.read_row_group(int(group), columns=names)
            parts.append(table.take(pa.array(in_group - starts[group])))
        table = pa.concat_tables(parts)
        # Back to the order asked for.
        lookup = np.searchsorted(unique, positions)
        return table.take(pa.array(lookup))

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows of some columns at once (for small stores; prefer :meth:`iter_batches`)."""
        batches = list(self.iter_batches(columns))
        schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        return pa.Table.from_batches(batches, schema=schema)

    def to_geodataframe(self, columns: Sequence[str] | None = None) -> Any:
        """The store as a GeoDataFrame (``columns``: attribute columns to read besides the geometry)."""
        import geopandas as gpd
        import shapely

        wanted = [c for c in (columns or self.schema.names) if c != "geometry"]
        table = self.read_table([*wanted, "geometry"])
        frame = table.drop(["geometry"]).to_pandas()
        geometry = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
        return gpd.GeoDataFrame(frame, geometry=geometry, crs=self.meta.crs)


def store_lock_path(path: str | os.PathLike[str]) -> Path:
    """The run lock of a store being written (see :class:`geobimors.run.store.RunLock`)."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


def _being_written(path: Path) -> bool:
    """True when a geobimors run holds the lock on ``path``."""
    lock = store_lock_path(path)
    if not lock.exists():
        return False
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def open_store(path: str | os.PathLike[str]) -> EmbeddingStore:
    """Open and validate an embeddings store.

    Raises:
        InputError: (one line) if the file is missing, not Parquet, truncated, not a
            geobimors GeoParquet store, of a newer format, or still being written.
    """
    p = Path(path).expanduser()
    partial = p.with_name(p.name + ".partial")
    if _being_written(p):
        raise InputError(f"embeddings store {p} is still being written by another geobimors run; wait for it to finish")
    if not p.exists():
        if partial.is_dir():
            raise InputError(
                f"embeddings store {p} is not finished (an interrupted run left {partial.name}); "
                "run the same geobimors embed command again to complete it"
            )
        raise InputError(f"embeddings store {p} does not exist; create it with geobimors embed SCENE -o {p.name}")
    if p.is_dir():
        raise InputError(f"embeddings store {p} is a directory; give the .parquet file of one scene")
    try:
        # pre_buffer=False: pyarrow would otherwise cache every column chunk read so far, so memory
        # would grow with the store instead of staying at one batch.
        parquet = pq.ParquetFile(p, pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"{p} is not a readable Parquet file (truncated, still being copied, or another format: "
            f"{_first_line(exc)}); re-create it with geobimors embed"
        ) from exc
    metadata = parquet.schema_arrow.metadata or {}
    if META_KEY not in metadata:
        raise InputError(
            f"{p} is a Parquet file but not a geobimors embeddings store (no 'geobimors' metadata); "
            "create one with geobimors embed"
        )
    try:
        meta = StoreMeta.from_json(metadata[META_KEY])
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{p} has unreadable geobimors metadata ({_first_line(exc)}); re-create it with geobimors embed"
        ) from exc
    if meta.format_version > FORMAT_VERSION:
        raise InputError(
            f"{p} is store format {meta.format_version}, written by geobimors {meta.geobimors_version}; "
            f"this geobimors ({__version__}) reads format {FORMAT_VERSION}: upgrade geobimors"
        )
    if not meta.complete:
        raise InputError(
            f"embeddings store {p} is incomplete (still being written, or the run was interrupted); "
            "run the same geobimors embed command again to complete it"
        )
    if GEO_KEY not in metadata:
        raise InputError(f"{p} has no GeoParquet 'geo' metadata; re-create it with geobimors embed")
    try:
        geo = json.loads(metadata[GEO_KEY])
    except ValueError as exc:
        raise InputError(f"{p} has unreadable GeoParquet metadata; re-create it with geobimors embed") from exc
    names = parquet.schema_arrow.names
    missing = [c for c in BASE_COLUMNS if c not in names]
    if missing:
        raise InputError(
            f"{p} lacks the store column {missing[0]!r}; it is not a complete geobimors store, "
            "re-create it with geobimors embed"
        )
    width = parquet.schema_arrow.field(EMBEDDING).type
    if not pa.types.is_fixed_size_list(width) or width.list_size != meta.embedding_dim:
        raise InputError(
            f"{p}: the embedding column does not match its metadata ({meta.embedding_dim}-d); "
            "re-create it with geobimors embed"
        )
    return EmbeddingStore(p, parquet, meta, geo)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def grid_metadata(grid: Any) -> dict[str, Any]:
    """The ``grid`` entry of :class:`StoreMeta` for a :class:`~geobimors.raster.grid.ChipGrid`."""
    t = grid.transform
    chip_transform = t @ Affine.scale(grid.stride_x, grid.stride_y)
    return {
        "crs": grid.crs.to_wkt() if grid.crs is not None else None,
        "scene_transform": list(t)[:6],
        "width": int(grid.width),
        "height": int(grid.height),
        "chip": [int(grid.chip_width), int(grid.chip_height)],
        "step": [int(grid.stride_x), int(grid.stride_y)],
        "n_rows": int(grid.n_rows),
        "n_cols": int(grid.n_cols),
        "transform": list(chip_transform)[:6],
    }


def make_meta(
    read: Any,
    model: str,
    model_fingerprint: str,
    embedding_dim: int,
    normalisation: dict[str, Any],
    dtype: str = "float16",
    gsd: float | None = None,
    precision: str = "fp32",
    captioner: str | None = None,
    caption_model: str | None = None,
    caption_dim: int | None = None,
    tta: int = 1,
) -> StoreMeta:
    """Store metadata for chips read with a :class:`~geobimors.raster.read.ReadSpec`.

    Args:
        read: how chips are read (scene, grid, bands, scaling, nodata, min_valid).
        model: model name.
        model_fingerprint: the model's weights fingerprint.
        embedding_dim: image embedding width.
        normalisation: ``{"mean": [...], "std": [...]}`` of the model.
        dtype: ``float16`` or ``float32``.
        gsd: target ground resolution in m/px (``None``: the scene's).
        precision: autocast precision of the image pass.
        captioner: captioner name when captions are stored.
        caption_model: caption encoder name when caption embeddings are stored.
        caption_dim: caption embedding width.
        tta: views each embedding is the mean of (:attr:`StoreMeta.tta`).
    """
    _arrow_dtype(dtype)
    grid = read.grid
    scale = read.scale
    scaling = {"method": scale.source, "low": list(scale.low), "high": list(scale.high)} if scale is not None else None
    return StoreMeta(
        model=model,
        model_fingerprint=model_fingerprint,
        embedding_dim=int(embedding_dim),
        dtype=dtype,
        chip_size=(int(grid.out_width), int(grid.out_height)),
        gsd=gsd,
        overlap=(int(grid.chip_width - grid.stride_x), int(grid.chip_height - grid.stride_y)),
        bands=tuple(int(b) for b in read.bands),
        scaling=scaling,
        normalisation={k: [round(float(v), 6) for v in vs] for k, vs in normalisation.items()},
        grid=grid_metadata(grid),
        scene=str(read.path),
        captioner=captioner,
        caption_model=caption_model,
        caption_dim=caption_dim,
        precision=precision,
        nodata=read.nodata,
        min_valid=float(read.min_valid),
        tta=tta,
        n_chips=len(grid),
    )

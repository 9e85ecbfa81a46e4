"""A partitioned embeddings store: several store files (one per scene) read as one.

``geobimors embed SCENE [SCENE ...] -o DIR`` writes ``DIR/<scene-name>.parquet``, one valid
store file per scene. :func:`open_stores` opens such a directory (or a glob, an ``@list.txt``
file, or a list of paths) as a :class:`StoreSet`, which search, re-labelling and the index read
like one store:

* every file must hold embeddings of the same model weights and embedding settings (width,
  number type, chip size, GSD, overlap, precision, normalisation, captions); otherwise a one-line
  error names the two files and the first setting that differs. Scaling ranges and bands may
  differ: they are per-scene choices that feed the same model.
* rows are numbered file after file (files sorted by path), and every row keeps its ``scene``.
* the set has one CRS: the files' CRS when they all share one, else EPSG:4326. Footprints
  (``geometry`` and ``bbox``) of files in another CRS are reprojected exactly as they are read:
  every edge is densified (:data:`DENSIFY` points per edge) before its vertices are transformed,
  so a reprojected footprint still follows the pixels that were read.
* files are opened one at a time while streaming, row group by row group: memory does not grow
  with the number of files or their size, and thousands of files do not hold thousands of handles.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from rasterio.crs import CRS

from geobimors.embeddings.store import EmbeddingStore, StoreMeta, geo_metadata, open_store
from geobimors.errors import InputError

DENSIFY = 16
"""Points per chip edge when footprints are reprojected to the set's CRS."""

FALLBACK_CRS = CRS.from_epsg(4326)
# Settings every file of a set must share (what the embeddings mean), with names for messages.
SHARED_SETTINGS = (
    ("model_fingerprint", "model weights"),
    ("embedding_dim", "embedding width"),
    ("dtype", "number type (--dtype)"),
    ("chip_size", "chip size"),
    ("gsd", "GSD"),
    ("overlap", "overlap"),
    ("precision", "precision"),
    ("normalisation", "image normalisation"),
    ("captioner", "captioner"),
    ("caption_model", "caption encoder"),
    ("caption_dim", "caption embedding width"),
)


@dataclass(frozen=True)
class _Member:
    """One file of a set: what was read from its footer when the set was opened."""

    path: Path
    meta: StoreMeta
    geo: dict[str, Any]
    n_rows: int
    offset: int


def store_files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[list[Path], Path | None]:
    """The store files a source names, and the directory that holds the set (``None`` for globs and lists).

    Args:
        source: a store file, a directory of store files (``*.parquet``), a glob, an ``@list.txt``
            file (one path per line, relative to the list), or a sequence of paths.

    Raises:
        InputError: for an empty directory, a glob that matches nothing, an unreadable or empty
            list, a path listed twice, or a directory holding an unfinished store.
    """
    if not isinstance(source, (str, os.PathLike)):
        paths = [Path(p).expanduser() for p in source]
        if not paths:
            raise InputError("no embeddings store given; pass a store file, a directory of them or a glob")
        return _unique(paths, "the list"), None
    text = os.fspath(source)
    if text.startswith("@"):
        listing = Path(text[1:]).expanduser()
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"cannot read the list of stores {listing}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InputError(f"the list of stores {listing} is not UTF-8 text (one .parquet path per line)") from None
        names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not names:
            raise InputError(f"the list of stores {listing} names no file (one .parquet path per line)")
        return _unique([_relative(listing.parent, name) for name in names], str(listing)), None
    path = Path(text).expanduser()
    if path.is_dir():
        unfinished = sorted(p for p in path.glob("*.parquet.partial") if p.is_dir())
        if unfinished:
            store = unfinished[0].with_suffix("")
            raise InputError(
                f"embeddings store {store} in {path} is not finished (an interrupted run left {unfinished[0].name}); "
                "run the same geobimors embed command again to complete it"
            )
        files = sorted(p for p in path.glob("*.parquet") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InputError(
                f"directory {path} holds no embeddings store (*.parquet); "
                f"create them with geobimors embed SCENE [SCENE ...] -o {path}"
            )
        return files, path
    if glob.has_magic(text) and not path.exists():
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if Path(p).is_file())
        if not files:
            raise InputError(f"no file matches {text!r}; check the pattern (quote it so the shell leaves it alone)")
        return files, None
    return [path], None


def _relative(base: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def _unique(paths: list[Path], where: str) -> list[Path]:
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise InputError(f"embeddings store {path} is named twice in {where}; give every store once")
        seen[key] = path
    return paths


def open_stores(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | EmbeddingStore | StoreSet,
) -> EmbeddingStore | StoreSet:
    """Open one store file, or several (a directory, glob, ``@list.txt`` or list) as one :class:`StoreSet`.

    A single file opens as an :class:`~geobimors.embeddings.store.EmbeddingStore`, exactly as
    :func:`~geobimors.embeddings.store.open_store` does.

    Raises:
        InputError: (one line) for a bad file (see ``open_store``), an empty directory or glob, or
            files made with different models or embedding settings (naming both files).
    """
    if isinstance(source, (EmbeddingStore, StoreSet)):
        return source
    files, directory = store_files(source)
    if len(files) == 1 and directory is None:
        return open_store(files[0])
    if directory is not None:
        label = directory
    elif isinstance(source, (str, os.PathLike)):
        label = Path(os.fspath(source))
    else:
        label = files[0].parent
    return StoreSet(files, label, directory)


class StoreSet:
    """Several store files read as one store (the interface search, re-labelling and the index use).

    Attributes:
        path: the directory of the set (or the glob / list it was opened from), for messages.
        directory: the directory when the set is one (the index is written beside it), else ``None``.
        members: the files, in row order, with their metadata.
        crs: the set's CRS (every footprint is in it).
        meta: the first file's metadata with the set's CRS (settings are shared by all files).
        geo: GeoParquet metadata of the whole set (bbox in :attr:`crs`).
        n_rows: chips in all files.
        schema: the Arrow schema (the same for every file).
    """

    def __init__(self, files: Sequence[Path], path: Path, directory: Path | None = None) -> None:
        self.path = path
        self.directory = directory
        members: list[_Member] = []
        schema: pa.Schema | None = None
        offset = 0
        for file in files:
            store = open_store(file)
            try:
                if members:
                    _check_same(members[0], store)
                    if store.schema.remove_metadata() != schema:
                        raise InputError(
                            f"embeddings stores {members[0].path} and {store.path} have different columns; "
                            "re-embed them with the same geobimors version and options"
                        )
                else:
                    schema = store.schema.remove_metadata()
                members.append(_Member(store.path, store.meta, store.geo, store.n_rows, offset))
                offset += store.n_rows
            finally:
                _close(store)
        assert schema is not None
        self.members = members
        self.schema: pa.Schema = schema
        self.n_rows = offset
        self.crs = _common_crs(members)
        first = members[0].meta
        grid = {**first.grid, "crs": self.crs.to_wkt() if self.crs is not None else None}
        self.meta = replace(first, grid=grid, scene=str(path), n_chips=sum(m.meta.n_chips for m in members))
        self.geo = geo_metadata(self.crs, self._bbox())

    def __repr__(self) -> str:
        return f"StoreSet({str(self.path)!r}, {len(self.members)} files, {self.n_rows} chips, {self.meta.describe()})"

    @property
    def columns(self) -> list[str]:
        """Column names in file order."""
        return list(self.schema.names)

    @property
    def scenes(self) -> list[str]:
        """The scene of every file, in row order."""
        return [m.meta.scene for m in self.members]

    @property
    def index_base(self) -> Path | None:
        """Where an index of the set lives (``DIR`` -> ``DIR.index``); ``None`` for a glob or list."""
        return self.directory

    def mixed_crs(self) -> bool:
        """True when some file's footprints are reprojected to the set's CRS."""
        return any(not _same_crs(m.meta.crs, self.crs) for m in self.members)

    def _bbox(self) -> tuple[float, float, float, float] | None:
        box = [np.inf, np.inf, -np.inf, -np.inf]
        for member in self.members:
            try:
                bounds = [float(v) for v in member.geo["columns"]["geometry"]["bbox"]]
            except (KeyError, TypeError, ValueError):
                continue
            if not _same_crs(member.meta.crs, self.crs):
                outline = shapely.box(*bounds)
                bounds = list(reproject(np.array([outline]), member.meta.crs, self.crs)[0].bounds)
            box = [min(box[0], bounds[0]), min(box[1], bounds[1]), max(box[2], bounds[2]), max(box[3], bounds[3])]
        return (box[0], box[1], box[2], box[3]) if np.isfinite(box).all() else None

    def iter_members(self) -> Iterator[tuple[_Member, EmbeddingStore]]:
        """Each file opened in turn (closed once the caller moves on)."""
        for member in self.members:
            store = open_store(member.path)
            try:
                yield member, store
            finally:
                _close(store)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        """Stream the rows of every file as record batches, footprints in the set's CRS.

        Args:
            columns: columns to read (default: all).
            batch_size: rows per batch at most.
        """
        names = list(columns) if columns is not None else self.columns
        missing = [c for c in names if c not in self.schema.names]
        if missing:
            raise InputError(f"embeddings stores in {self.path} have no column {missing[0]!r}")
        for member, store in self.iter_members():
            for batch in store.iter_batches(names, batch_size):
                yield self._to_set_crs(batch, member)

    def _to_set_crs(self, batch: pa.RecordBatch, member: _Member) -> pa.RecordBatch:
        """A batch with ``geometry`` and ``bbox`` reprojected to the set's CRS (unchanged when already in it)."""
        names = batch.schema.names
        if _same_crs(member.meta.crs, self.crs) or ("geometry" not in names and "bbox" not in names):
            return batch
        if "geometry" in names:
            footprints = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
        else:  # the bbox rectangles (a footprint lies inside its bbox, so theirs still contains it)
            bbox = batch.column("bbox")
            corners = [bbox.field(k).to_numpy(zero_copy_only=False) for k in ("xmin", "ymin", "xmax", "ymax")]
            footprints = shapely.box(*corners)
        polygons = reproject(footprints, member.meta.crs, self.crs)
        arrays = list(batch.columns)
        if "geometry" in names:
            arrays[names.index("geometry")] = pa.array(shapely.to_wkb(polygons), pa.binary())
        if "bbox" in names:
            bounds = shapely.bounds(polygons)
            arrays[names.index("bbox")] = pa.StructArray.from_arrays(
                [pa.array(bounds[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"]
            )
        return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)

    embeddings_of = staticmethod(EmbeddingStore.embeddings_of)

    def check_model(self, model: str, fingerprint: str) -> None:
        """Refuse to use the set with another model's weights (all files share the first's)."""
        with_first = open_store(self.members[0].path)
        try:
            with_first.check_model(model, fingerprint)
        finally:
            _close(with_first)

    def member_of(self, positions: np.ndarray) -> np.ndarray:
        """Index of the file holding each global row position."""
        starts = np.array([m.offset for m in self.members], dtype=np.int64)
        return np.searchsorted(starts, np.asarray(positions, dtype=np.int64), side="right") - 1

    def take_rows(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Rows at global positions (in the order asked for), footprints in the set's CRS."""
        names = [c for c in columns if c in self.columns]
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return self.schema.empty_table().select(names)
        owner = self.member_of(positions)
        parts: list[pa.Table] = []
        order: list[np.ndarray] = []
        for index in np.unique(owner):
            member = self.members[int(index)]
            chosen = np.flatnonzero(owner == index)
            store = open_store(member.path)
            try:
                table = store.take_rows(positions[chosen] - member.offset, names)
            finally:
                _close(store)
            batches = [self._to_set_crs(b, member) for b in table.to_batches()]
            parts.append(pa.Table.from_batches(batches, schema=table.schema))
            order.append(chosen)
        table = pa.concat_tables(parts)
        inverse = np.empty(len(positions), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(positions))
        return table.take(pa.array(inverse))

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows of some columns at once (for small sets; prefer :meth:`iter_batches`)."""
        names = list(columns) if columns is not None else self.columns
        batches = list(self.iter_batches(names))
        return pa.Table.from_batches(batches, schema=pa.schema([self.schema.field(c) for c in names]))

    def to_geodataframe(self, columns: Sequence[str] | None = None) -> Any:
        """The set as a GeoDataFrame in its CRS (``columns``: attribute columns besides the geometry)."""
        import geopandas as gpd

        wanted = [c for c in (columns or self.columns) if c != "geometry"]
        table = self.read_table([*wanted, "geometry"])
        frame = table.drop(["geometry"]).to_pandas()
        geometry = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
        return gpd.GeoDataFrame(frame, geometry=geometry, crs=self.crs)

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the set's content: every file's name and fingerprint (for the index's freshness)."""
        from geobimors.embeddings.index import store_fingerprint

        files = [{"name": m.path.name, **store_fingerprint(m.path, m.n_rows)} for m in self.members]
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        return {"files": len(files), "n_rows": self.n_rows, "sha256": digest}


def _close(store: EmbeddingStore) -> None:
    close = getattr(store._file, "close", None)
    if close is not None:
        close()


def _check_same(first: _Member, store: EmbeddingStore) -> None:
    for name, what in SHARED_SETTINGS:
        a, b = getattr(first.meta, name), getattr(store.meta, name)
        if a != b:
            if name == "model_fingerprint":
                shown = f"model {first.meta.model} (weights {a}) vs {store.meta.model} (weights {b})"
            else:
                shown = f"{what} {_show(a)} vs {_show(b)}"
            raise InputError(
                f"embeddings stores {first.path} and {store.path} were made with different settings ({shown}); "
                "read them separately, or re-embed one with the other's settings"
            )


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def _same_crs(a: CRS | None, b: CRS | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(a == b)


def _common_crs(members: Sequence[_Member]) -> CRS | None:
    crss = [m.meta.crs for m in members]
    with_crs = [m for m, crs in zip(members, crss) if crs is not None]
    if with_crs and len(with_crs) < len(members):
        without = next(m for m, crs in zip(members, crss) if crs is None)
        raise InputError(
            f"embeddings store {without.path} is in pixel coordinates (its scene has no CRS) but "
            f"{with_crs[0].path} has a CRS; read them separately"
        )
    first = crss[0]
    if first is None or all(_same_crs(crs, first) for crs in crss):
        return first
    return FALLBACK_CRS


def reproject(polygons: np.ndarray, source: CRS | None, target: CRS | None) -> np.ndarray:
    """Polygons reprojected exactly: every edge densified to :data:`DENSIFY` pieces, then transformed.

    Args:
        polygons: shapely polygons in ``source``.
        source: their CRS.
        target: the CRS wanted.
    """
    if _same_crs(source, target) or len(polygons) == 0:
        return polygons
    assert source is not None and target is not None
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer

    transformer = Transformer.from_crs(
        ProjCRS.from_wkt(source.to_wkt()), ProjCRS.from_wkt(target.to_wkt()), always_xy=True
    )
    bounds = shapely.bounds(polygons)
    edge = np.minimum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
    step = np.where(edge > 0, edge / DENSIFY, 1.0)
    dense = shapely.segmentize(polygons, step)

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return np.asarray(shapely.transform(dense, move))

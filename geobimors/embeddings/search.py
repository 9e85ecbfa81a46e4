"""Search an embeddings store: text queries, examples (like / unlike), an area, a score cut.

A query is one unit vector in the store's image-embedding space:

* a **text query** is the prompt-template ensemble of the zero-shot head
  (:class:`geobimors.heads.zero_shot.ZeroShotHead`): the same vector ``geobimors map`` compares
  chips with, so a search for "forest" ranks chips the way a map with the label "forest" scores them;
* an **example query** (``like``) is built from chips of the store (by chip id, or every chip a
  point/polygon file covers) or from image files embedded with the store's model. Several
  examples combine with the Rocchio rule of relevance feedback, without the original-query term:

  ``q = normalise(mean(positives) - w * mean(negatives))``, ``w = unlike_weight`` (default 0.5).

  ``unlike`` examples given with text queries refine every text query the same way
  (``normalise(text - w * mean(negatives))``). Text and image vectors are never averaged
  together: CLIP's two modalities sit in different regions of the space (the modality gap),
  so a mean of a text and an image vector ranks worse than either.

The score of a chip is the cosine similarity of its embedding with the query (``-1..1``); with
``caption_weight`` w > 0 and captions in the store it is ``(1 - w) * image + w * caption``, where
``caption`` is the cosine of the chip caption's embedding with the query text's (same caption encoder).

Exact search streams the store's row groups with a running top-k per query, so memory does not
grow with the store. An approximate index (:mod:`geobimors.embeddings.index`) answers whole-store
queries when it exists and is fresh.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from geobimors.errors import InputError, check_at_least_one

if TYPE_CHECKING:
    import geopandas as gpd

    from geobimors.embeddings.dataset import StoreSet
    from geobimors.embeddings.store import EmbeddingStore
    from geobimors.models.clip import ClipModel

MAX_QUERY_CHARS = 1000
DEFAULT_UNLIKE_WEIGHT = 0.5
DEFAULT_K = 100
CHIP_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
LIKE_QUERY = "like"
HIT_COLUMNS = ("rank", "score", "query", "chip_id", "row", "col")


@dataclass(frozen=True)
class Query:
    """One search: a name for the output and its unit vector in the image-embedding space.

    Attributes:
        name: the query text, or ``like`` for an example query.
        vector: (D,) float32 unit vector.
        text: the text a caption encoder embeds for caption blending (text queries only).
    """

    name: str
    vector: np.ndarray
    text: str | None = None


@dataclass
class SearchResult:
    """Hits of one search.

    Attributes:
        frame: one row per hit: ``rank`` (1 = best, per query), ``score``, ``query``, ``chip_id``,
            ``row``, ``col``, ``caption`` (when stored) and the chip footprint, in the store's CRS.
        queries: the queries, in output order.
        n_rows: store rows searched (after ``within``), or the store size for indexed search.
        method: ``exact`` or ``index (LIBRARY)``.
        notes: one-line remarks for the user (stale index, empty area, ...).
        grids: per query, a (n_rows, n_cols) float32 score grid of the chip grid (NaN: no chip),
            when asked for.
        store: the store searched.
    """

    frame: gpd.GeoDataFrame
    queries: list[Query]
    n_rows: int
    method: str
    notes: list[str] = field(default_factory=list)
    grids: dict[str, np.ndarray] | None = None
    store: EmbeddingStore | StoreSet | None = None


def check_query_text(text: str) -> str:
    """A text query, stripped.

    Raises:
        InputError: for an empty query or one far longer than any text encoder reads.
    """
    stripped = " ".join(str(text).split())
    if not stripped:
        raise InputError('empty query: give the words to search for, e.g. geobimors search STORE "solar farm"')
    if len(stripped) > MAX_QUERY_CHARS:
        raise InputError(
            f"query of {len(stripped):,} characters: text encoders read about 77 tokens; give a short "
            f"description (at most {MAX_QUERY_CHARS} characters)"
        )
    return stripped


def check_k(k: int) -> int:
    """Validate the number of hits per query."""
    if k < 1:
        raise InputError(f"-k must be at least 1 (hits per query), got {k}")
    return k


def text_queries(clip: ClipModel, texts: Sequence[str]) -> list[Query]:
    """Unit vectors of text queries: the zero-shot head's prompt-template ensemble."""
    from geobimors.heads.zero_shot import ZeroShotHead
    from geobimors.labels import Label

    if not texts:
        return []
    head = ZeroShotHead(clip, [Label(text, text) for text in texts])
    features = head.class_features.detach().cpu().numpy().astype(np.float32)
    return [Query(text, features[i], text) for i, text in enumerate(texts)]


def rocchio(positives: np.ndarray | None, negatives: np.ndarray | None, weight: float) -> np.ndarray:
    """Combine example vectors: ``normalise(mean(positives) - weight * mean(negatives))``.

    Args:
        positives: (P, D) vectors (P >= 1).
        negatives: (M, D) vectors, or None / empty.
        weight: how strongly the negatives push the query away.

    Raises:
        InputError: when the combination cancels out (positives equal to the negatives).
    """
    if positives is None or len(positives) == 0:
        raise InputError("--unlike needs something to search for: a text query or --like examples")
    query = positives.mean(axis=0)
    if negatives is not None and len(negatives):
        query = query - weight * negatives.mean(axis=0)
    norm = float(np.linalg.norm(query))
    if norm < 1e-6:
        raise InputError("the --like and --unlike examples cancel out; drop an --unlike or lower --unlike-weight")
    return (query / norm).astype(np.float32)


# ----------------------------------------------------------------------------------- areas


def _read_vector_geometry(path: Path, crs: Any, what: str) -> Any:
    """Union of a vector file's geometries, in ``crs``."""
    import geopandas as gpd

    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types
        raise InputError(f"{what} {path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if len(frame) == 0:
        raise InputError(f"{what} {path} has no geometries")
    if crs is not None and frame.crs is not None and frame.crs != crs:
        frame = frame.to_crs(crs)
    return shapely.union_all(frame.geometry.to_numpy())


def parse_within(value: str | Path | Any, crs: Any) -> Any:
    """An area in the store's CRS from a vector file, a shapely geometry or ``XMIN,YMIN,XMAX,YMAX[@CRS]``.

    A bounding box is in the store's CRS unless ``@CRS`` names another (``@EPSG:4326`` for lon/lat).

    Raises:
        InputError: for text that is neither an existing file nor a bounding box.
    """
    if isinstance(value, shapely.Geometry):
        return value
    text = str(value)
    if Path(text).expanduser().exists():
        return _read_vector_geometry(Path(text).expanduser(), crs, "--within")
    box_text, _, box_crs = text.partition("@")
    try:
        numbers = [float(v) for v in box_text.replace(" ", "").split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != 4 or not (numbers[0] < numbers[2] and numbers[1] < numbers[3]):
        raise InputError(
            f"--within {text[:80]!r}: give a vector file, or XMIN,YMIN,XMAX,YMAX in the store's CRS "
            "(append @EPSG:4326 for lon/lat), with XMIN < XMAX and YMIN < YMAX"
        )
    area = shapely.box(*numbers)
    if box_crs:
        from pyproj import CRS as ProjCRS
        from pyproj import Transformer
        from pyproj.exceptions import CRSError

        try:
            source = ProjCRS.from_user_input(box_crs)
        except CRSError:
            raise InputError(f"--within {text[:80]!r}: unknown CRS {box_crs!r} (use e.g. @EPSG:4326)") from None
        if crs is not None:
            to_store = Transformer.from_crs(source, ProjCRS.from_user_input(crs.to_wkt()), always_xy=True)
            # Densified so a lon/lat box keeps its curved edges in a projected CRS.
            dense = area.segmentize(max(numbers[2] - numbers[0], 1e-9) / 32)
            area = shapely.transform(dense, lambda xy: np.column_stack(to_store.transform(xy[:, 0], xy[:, 1])))
    return area


def _area_mask(batch: pa.RecordBatch, area: Any) -> np.ndarray:
    """Rows of a batch whose chip footprint overlaps ``area`` (touching an edge is not enough)."""
    xmin, ymin, xmax, ymax = area.bounds
    bbox = batch.column("bbox")
    near = (
        (pc.struct_field(bbox, "xmin").to_numpy(zero_copy_only=False) < xmax)
        & (pc.struct_field(bbox, "xmax").to_numpy(zero_copy_only=False) > xmin)
        & (pc.struct_field(bbox, "ymin").to_numpy(zero_copy_only=False) < ymax)
        & (pc.struct_field(bbox, "ymax").to_numpy(zero_copy_only=False) > ymin)
    )
    if not near.any():
        return near
    index = np.flatnonzero(near)
    geometries = shapely.from_wkb(batch.column("geometry").take(pa.array(index)).to_numpy(zero_copy_only=False))
    keep = shapely.intersects(geometries, area) & ~shapely.touches(geometries, area)
    mask = np.zeros(len(near), dtype=bool)
    mask[index[keep]] = True
    return mask


def store_extent(store: EmbeddingStore | StoreSet) -> tuple[float, float, float, float] | None:
    """The store's bounding box from its GeoParquet metadata (None when absent)."""
    try:
        geo = store.geo
        bbox = geo["columns"][geo.get("primary_column", "geometry")]["bbox"]
        return (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
    except (KeyError, ValueError, TypeError, IndexError):
        return None


# -------------------------------------------------------------------------------- examples


def _is_image(path: Path) -> bool:
    from geobimors.raster.images import IMAGE_SUFFIXES

    return path.suffix.lower() in IMAGE_SUFFIXES


def embed_image_files(clip: ClipModel, paths: Sequence[Path]) -> np.ndarray:
    """(N, D) unit image embeddings of image files, read as RGB and resized to the model's input."""
    from geobimors.raster.images import read_rgb

    vectors = []
    for path in paths:
        pixels = np.array(read_rgb(path))  # a writable copy for torch
        vectors.append(clip.encode_images(clip.preprocess(pixels[None])).cpu().numpy()[0])
    return np.asarray(vectors, dtype=np.float32)


@dataclass
class _Examples:
    """What the ``like``/``unlike`` arguments name, sorted by kind."""

    chip_ids: list[str] = field(default_factory=list)
    areas: list[tuple[str, Any]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def _sort_examples(items: Sequence[str | Path], crs: Any, option: str) -> _Examples:
    examples = _Examples()
    for item in items:
        text = str(item).strip()
        path = Path(text).expanduser()
        if path.is_file():
            if _is_image(path):
                examples.images.append(path)
            else:
                examples.areas.append((text, _read_vector_geometry(path, crs, option)))
        elif CHIP_ID_PATTERN.match(text.lower()):
            examples.chip_ids.append(text.lower())
        else:
            raise InputError(
                f"{option} {text[:80]!r} is neither a file (image, or points/polygons over the scene) nor a "
                "chip id (16 hex digits, the chip_id column of the store or of a hits layer)"
            )
    return examples


def _store_examples(store: EmbeddingStore | StoreSet, examples: _Examples, option: str) -> np.ndarray:
    """Embeddings of the store's chips named by id or covered by example geometries, in one pass."""
    wanted = set(examples.chip_ids)
    found: set[str] = set()
    covered = [0] * len(examples.areas)
    vectors: list[np.ndarray] = []
    if not wanted and not examples.areas:
        return np.zeros((0, 0), dtype=np.float32)
    columns = ["chip_id", "embedding"] + (["bbox", "geometry"] if examples.areas else [])
    for batch in store.iter_batches(columns=columns):
        mask = np.zeros(batch.num_rows, dtype=bool)
        if wanted:
            ids = batch.column("chip_id")
            hit = pc.is_in(ids, value_set=pa.array(sorted(wanted))).to_numpy(zero_copy_only=False)
            found.update(ids.filter(pa.array(hit)).to_pylist())
            mask |= hit
        for i, (_, area) in enumerate(examples.areas):
            if area.geom_type in ("Point", "MultiPoint", "LineString", "MultiLineString"):
                area_mask = _point_mask(batch, area)
            else:
                area_mask = _area_mask(batch, area)
            covered[i] += int(area_mask.sum())
            mask |= area_mask
        if mask.any():
            vectors.append(store.embeddings_of(batch.filter(pa.array(mask))))
    missing = sorted(wanted - found)
    if missing:
        raise InputError(
            f"{option} chip id {missing[0]} is not in {store.path}"
            + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; take ids from the store's or a hits layer's chip_id column"
        )
    for (name, _), count in zip(examples.areas, covered):
        if count == 0:
            raise InputError(f"{option} {name} covers no chip of {store.path}; check that it lies over the scene")
    return np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)


def _point_mask(batch: pa.RecordBatch, geometry: Any) -> np.ndarray:
    """Chips a point or line touches (inside or on the edge)."""
    xmin, ymin, xmax, ymax = geometry.bounds
    bbox = batch.column("bbox")
    near = (
        (pc.struct_field(bbox, "xmin").to_numpy(zero_copy_only=False) <= xmax)
        & (pc.struct_field(bbox, "xmax").to_numpy(zero_copy_only=False) >= xmin)
        & (pc.struct_field(bbox, "ymin").to_numpy(zero_copy_only=False) <= ymax)
        & (pc.struct_field(bbox, "ymax").to_numpy(zero_copy_only=False) >= ymin)
    )
    if not near.any():
        return near
    index = np.flatnonzero(near)
    geometries = shapely.from_wkb(batch.column("geometry").take(pa.array(index)).to_numpy(zero_copy_only=False))
    mask = np.zeros(len(near), dtype=bool)
    mask[index[shapely.intersects(geometries, geometry)]] = True
    return mask


def example_vectors(
    store: EmbeddingStore | StoreSet, items: Sequence[str | Path], clip: Callable[[], ClipModel], option: str
) -> np.ndarray:
    """(N, D) embeddings of ``like``/``unlike`` examples: chips of the store, or image files.

    Args:
        store: the store.
        items: chip ids, image files, or point/polygon vector files over the scene.
        clip: returns the store's model (loaded only when an image file must be embedded).
        option: the option name, for messages.
    """
    examples = _sort_examples(items, store.meta.crs, option)
    parts = []
    from_store = _store_examples(store, examples, option)
    if from_store.size:
        parts.append(from_store)
    if examples.images:
        parts.append(embed_image_files(clip(), examples.images))
    return np.concatenate(parts) if parts else np.zeros((0, store.meta.embedding_dim), dtype=np.float32)


# ----------------------------------------------------------------------------------- search


class TopK:
    """Running best-k (score, row position) per query, merged batch by batch."""

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = k
        self.scores = [np.zeros(0, dtype=np.float32) for _ in range(n_queries)]
        self.positions = [np.zeros(0, dtype=np.int64) for _ in range(n_queries)]

    def add(self, query: int, scores: np.ndarray, positions: np.ndarray) -> None:
        """Offer candidates to one query's list."""
        if len(scores) > self.k:  # the batch's own best k first: O(n), then a small merge
            best = np.argpartition(-scores, self.k - 1)[: self.k]
            scores, positions = scores[best], positions[best]
        merged_scores = np.concatenate([self.scores[query], scores])
        merged_positions = np.concatenate([self.positions[query], positions])
        if len(merged_scores) > self.k:
            best = np.argpartition(-merged_scores, self.k - 1)[: self.k]
            merged_scores, merged_positions = merged_scores[best], merged_positions[best]
        self.scores[query], self.positions[query] = merged_scores, merged_positions

    def sorted(self, query: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and positions, best first (ties: lower position first)."""
        order = np.lexsort((self.positions[query], -self.scores[query]))
        return self.scores[query][order], self.positions[query][order]


def exact_search(
    store: EmbeddingStore | StoreSet,
    vectors: np.ndarray,
    k: int,
    within: Any = None,
    min_score: float | None = None,
    caption_vectors: np.ndarray | None = None,
    caption_weight: float = 0.0,
    grid_shape: tuple[int, int] | None = None,
    batch_size: int = 65536,
) -> tuple[TopK, int, np.ndarray | None]:
    """Stream the store once: the top ``k`` rows per query vector.

    Args:
        store: the store.
        vectors: (Q, D) unit query vectors.
        k: hits per query.
        within: area in the store CRS (rows whose footprint overlaps it), or None.
        min_score: drop rows scoring below this.
        caption_vectors: (Q, E) caption-encoder query vectors for caption blending.
        caption_weight: weight of the caption similarity (0: image only).
        grid_shape: also return a (Q, n_rows, n_cols) score grid.
        batch_size: rows per streamed batch (bounds memory).

    Returns:
        The running top-k, the number of rows searched, and the score grids (or None).
    """
    columns = ["embedding"]
    if within is not None:
        columns += ["bbox", "geometry"]
    if grid_shape is not None:
        columns += ["row", "col"]
    blend = caption_vectors is not None and caption_weight > 0
    if blend:
        columns.append("caption_embedding")
    top = TopK(len(vectors), k)
    grids = np.full((len(vectors), *grid_shape), np.nan, dtype=np.float32) if grid_shape is not None else None
    queries_t = np.ascontiguousarray(vectors.T, dtype=np.float32)
    offset = 0
    searched = 0
    for batch in store.iter_batches(columns=columns, batch_size=batch_size):
        n = batch.num_rows
        positions = np.arange(offset, offset + n, dtype=np.int64)
        offset += n
        mask = _area_mask(batch, within) if within is not None else None
        if mask is not None and not mask.any():
            continue
        if mask is not None:
            batch, positions = batch.filter(pa.array(mask)), positions[mask]
        searched += batch.num_rows
        scores = store.embeddings_of(batch) @ queries_t
        if blend:
            captions = store.embeddings_of(batch, "caption_embedding")
            captions /= np.maximum(np.linalg.norm(captions, axis=1, keepdims=True), 1e-12)
            assert caption_vectors is not None
            scores = (1 - caption_weight) * scores + caption_weight * (captions @ caption_vectors.T)
        if grids is not None:
            rows = batch.column("row").to_numpy(zero_copy_only=False)
            cols = batch.column("col").to_numpy(zero_copy_only=False)
            grids[:, rows, cols] = scores.T
        for q in range(len(vectors)):
            column = scores[:, q]
            if min_score is not None:
                keep = column >= min_score
                top.add(q, column[keep], positions[keep])
            else:
                top.add(q, column, positions)
    return top, searched, grids


def take_rows(store: EmbeddingStore | StoreSet, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
    """Rows at the given positions (in the order asked for), reading only the row groups that hold them."""
    return store.take_rows(positions, columns)


def hits_frame(
    store: EmbeddingStore | StoreSet, queries: Sequence[Query], results: Sequence[tuple[np.ndarray, np.ndarray]]
) -> gpd.GeoDataFrame:
    """The hits of every query as one GeoDataFrame (rank per query, best first)."""
    import geopandas as gpd
    import pandas as pd

    all_positions = np.concatenate([positions for _, positions in results]) if results else np.zeros(0, np.int64)
    columns = ["chip_id", "row", "col", "caption", "geometry"]
    from geobimors.embeddings.dataset import StoreSet

    if isinstance(store, StoreSet):  # a set of stores: say which scene each hit is in
        columns.insert(1, "scene")
    table = take_rows(store, all_positions, columns)
    frame = pd.DataFrame(
        {
            "rank": np.concatenate([np.arange(1, len(s) + 1) for s, _ in results]).astype(np.int32)
            if results
            else np.zeros(0, np.int32),
            "score": np.concatenate([s for s, _ in results]).astype(np.float64) if results else np.zeros(0),
            "query": np.concatenate([[q.name] * len(s) for q, (s, _) in zip(queries, results)]).astype(object)
            if results
            else np.zeros(0, dtype=object),
        }
    )
    for name in ("chip_id", "scene", "row", "col", "caption"):
        if name in table.column_names:
            frame[name] = table.column(name).to_pandas()
    geometry = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    return gpd.GeoDataFrame(frame, geometry=geometry, crs=store.meta.crs)


def grid_shape_of(store: EmbeddingStore | StoreSet) -> tuple[int, int]:
    """(n_rows, n_cols) of the store's chip grid."""
    from geobimors.embeddings.dataset import StoreSet

    if isinstance(store, StoreSet):
        raise InputError(
            f"--raster needs one store file: the {len(store.members)} stores in {store.path} each have their own "
            "chip grid; search one scene's .parquet file for a similarity raster"
        )
    grid = store.meta.grid
    try:
        return int(grid["n_rows"]), int(grid["n_cols"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{store.path} has no chip grid in its metadata; it cannot be rasterised") from None


def search_store(
    store: EmbeddingStore | StoreSet,
    queries: Sequence[Query],
    k: int = DEFAULT_K,
    within: Any = None,
    min_score: float | None = None,
    caption_weight: float = 0.0,
    caption_vectors: np.ndarray | None = None,
    grids: bool = False,
    use_index: bool = True,
    nprobe: int | None = None,
) -> SearchResult:
    """Run queries against a store (the index when present, fresh and applicable, else exactly).

    Args:
        store: the store.
        queries: the queries.
        k: hits per query.
        within: area in the store's CRS.
        min_score: score cut.
        caption_weight: weight of caption similarity (needs ``caption_vectors`` and stored captions).
        caption_vectors: (Q, E) caption-encoder vectors of the query texts.
        grids: also compute score grids on the chip grid (for a similarity raster).
        use_index: use an index sidecar when one is present and fresh.
        nprobe: index cells scanned per query (default: the one stored with the index).
    """
    from geobimors.embeddings.index import open_index

    check_k(k)
    notes: list[str] = []
    vectors = np.stack([q.vector for q in queries]).astype(np.float32)
    if vectors.shape[1] != store.meta.embedding_dim:
        raise InputError(
            f"query vectors have {vectors.shape[1]} dimensions but {store.path} stores {store.meta.embedding_dim}; "
            "search with the store's own model"
        )
    index, index_note = open_index(store, nprobe) if use_index else (None, None)
    if index_note:
        notes.append(index_note)
    blocking = [
        reason
        for reason, active in (
            ("--within", within is not None),
            ("--raster", grids),
            ("caption blending", caption_weight > 0 and caption_vectors is not None),
        )
        if active
    ]
    if index is not None and blocking:
        notes.append(f"exact search: the index answers whole-store queries, not {', '.join(blocking)}")
        index = None
    grid_shape = grid_shape_of(store) if grids else None
    if index is not None:
        scores, positions = index.search(vectors, k)
        results = []
        for q in range(len(queries)):
            keep = positions[q] >= 0
            if min_score is not None:
                keep &= scores[q] >= min_score
            results.append((scores[q][keep].astype(np.float32), positions[q][keep].astype(np.int64)))
        method, searched, grid_values = f"index ({index.library})", store.n_rows, None
    else:
        top, searched, grid_values = exact_search(
            store, vectors, k, within, min_score, caption_vectors, caption_weight, grid_shape
        )
        results = [top.sorted(q) for q in range(len(queries))]
        method = "exact"
    if within is not None and searched == 0:
        extent = store_extent(store)
        where = f" (store extent {', '.join(f'{v:.6g}' for v in extent)})" if extent else ""
        notes.append(f"no chip of the store lies within the --within area{where}: no hits")
    elif min_score is not None and not any(len(s) for s, _ in results):
        notes.append(f"no chip scores {min_score} or more: no hits; lower --min-score")
    frame = hits_frame(store, queries, results)
    named_grids = {q.name: grid_values[i] for i, q in enumerate(queries)} if grid_values is not None else None
    return SearchResult(frame, list(queries), searched, method, notes, named_grids, store)


def search(
    store: str | Path | Sequence[str | Path] | EmbeddingStore | StoreSet,
    queries: str | Sequence[str] = (),
    *,
    like: Sequence[str | Path] = (),
    unlike: Sequence[str | Path] = (),
    unlike_weight: float = DEFAULT_UNLIKE_WEIGHT,
    k: int = DEFAULT_K,
    within: Any = None,
    min_score: float | None = None,
    caption_weight: float = 0.0,
    raster: bool = False,
    model: str | None = None,
    device: str = "auto",
    use_index: bool = True,
    nprobe: int | None = None,
) -> SearchResult:
    """Search a store by text and/or examples (see the module docs for the rules).

    Args:
        store: path of an embeddings store, or an opened one.
        queries: text queries ("solar farm"); one query or several.
        like: positive examples: chip ids, image files, point/polygon files over the scene.
        unlike: negative examples (same kinds).
        unlike_weight: weight of the negatives in the Rocchio rule.
        k: hits per query.
        within: an area: vector file, shapely geometry (store CRS) or ``XMIN,YMIN,XMAX,YMAX[@CRS]``.
        min_score: drop hits scoring below this.
        caption_weight: blend caption similarity into text-query scores (stores with captions).
        raster: also compute per-query score grids (``SearchResult.grids``).
        model: the store's model name (default: the one recorded in the store); another model
            with other weights is refused.
        device: where the model runs (text queries and image examples only).
        use_index: use a fresh index sidecar for whole-store queries.
        nprobe: index cells scanned per query (more: higher recall, slower).

    Returns:
        The hits and how they were found.
    """
    from geobimors.embeddings.dataset import open_stores

    opened = open_stores(store)
    texts = [check_query_text(q) for q in ([queries] if isinstance(queries, str) else list(queries))]
    check_k(k)
    check_at_least_one(nprobe, "--nprobe")
    if not texts and not like:
        raise InputError('nothing to search for: give a text query ("solar farm") or --like examples')
    if not 0.0 <= caption_weight <= 1.0:
        raise InputError(f"--caption-weight must be between 0 and 1, got {caption_weight}")
    if not (math.isfinite(unlike_weight) and unlike_weight >= 0):
        raise InputError(f"--unlike-weight must be a finite number, 0 or more, got {unlike_weight}")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise InputError(f"--min-score is a cosine similarity, between -1 and 1; got {min_score}")
    area = parse_within(within, opened.meta.crs) if within is not None else None
    loaded: list[ClipModel] = []

    def clip() -> ClipModel:
        if not loaded:
            loaded.append(store_model(opened, model, device))
        return loaded[0]

    negatives = example_vectors(opened, unlike, clip, "--unlike") if unlike else None
    query_list: list[Query] = []
    for query in text_queries(clip(), texts) if texts else []:
        vector = rocchio(query.vector[None], negatives, unlike_weight) if negatives is not None else query.vector
        query_list.append(Query(query.name, vector, query.text))
    if like:
        positives = example_vectors(opened, like, clip, "--like")
        query_list.append(Query(LIKE_QUERY, rocchio(positives, negatives, unlike_weight)))
    caption_vectors = None
    if caption_weight > 0 and texts:
        caption_vectors = caption_query_vectors(opened, texts, clip().device)
        if caption_vectors is not None and like:  # the example query has no text: no caption term
            caption_vectors = np.concatenate([caption_vectors, np.zeros((1, caption_vectors.shape[1]), np.float32)])
    return search_store(
        opened,
        query_list,
        k=k,
        within=area,
        min_score=min_score,
        caption_weight=caption_weight,
        caption_vectors=caption_vectors,
        grids=raster,
        use_index=use_index,
        nprobe=nprobe,
    )


def store_model(store: EmbeddingStore | StoreSet, model: str | None, device: str) -> ClipModel:
    """The model a store was embedded with (refusing other weights, with both names in the message)."""
    from geobimors.models.clip import load_model

    name = model or str(store.meta.model)
    clip = load_model(name, device, tta=store.meta.tta)  # example images embedded as the chips were
    store.check_model(name, clip.fingerprint)
    return clip


def caption_query_vectors(store: EmbeddingStore | StoreSet, texts: Sequence[str], device: Any) -> np.ndarray | None:
    """Unit caption-encoder vectors of query texts, or None when the store has no caption embeddings."""
    from geobimors.errors import warn
    from geobimors.models.caption_encoder import OFFLINE_DEFAULT, load_caption_encoder

    if not store.meta.has_caption_embeddings or "caption_embedding" not in store.columns:
        warn(f"{store.path} has no caption embeddings (embed with --captions); searching by image similarity only")
        return None
    encoder = load_caption_encoder(str(store.meta.caption_model or OFFLINE_DEFAULT), device)
    vectors = encoder.encode(list(texts)).cpu().numpy().astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

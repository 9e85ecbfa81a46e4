"""An approximate nearest-neighbour index beside an embeddings store (``geobimors index``).

The index is a faiss ``IndexIVFScalarQuantizer`` with fp16 codes and inner-product metric:
an inverted file of ``nlist`` k-means cells, each query scanning the ``nprobe`` nearest cells.
fp16 codes hold a float16 store's vectors exactly, so the scores of the hits it returns are the
exact cosine similarities; only the candidate set is approximate. Why this and not HNSW
(usearch, faiss HNSW): measured in docs/search.md -- on this project's shared 2-core machine an
HNSW graph took about 250 s for 100k 512-d rows (most of an hour for 1M), the IVF index 4-5 minutes
for 1M, and both answer in milliseconds; IVF's recall is tuned after the build with ``nprobe``.

Files: ``STORE.index`` (faiss binary) and ``STORE.index.json`` (settings and the store's
fingerprint); for a directory of store files (:class:`~geobimors.embeddings.dataset.StoreSet`),
``DIR.index`` beside the directory, over the rows of all its files in order, with every file's
fingerprint. Both are written to temporary names and renamed into place. The index is used
when its fingerprint (file size, row count and a SHA-256 of the Parquet footer, which holds
every row group's statistics and offsets) matches the store; otherwise search notes that it
is stale and searches exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geobimors.errors import InputError, OutputError, RunError

if TYPE_CHECKING:
    from geobimors.embeddings.dataset import StoreSet
    from geobimors.embeddings.store import EmbeddingStore

INDEX_SUFFIX = ".index"
FORMAT_VERSION = 1
LIBRARY = "faiss"
_LOADED: dict[str, tuple[tuple[str, int, str], Any]] = {}


def index_paths(store_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The index file and its JSON sidecar for a store path."""
    path = Path(store_path)
    index = path.with_name(path.name + INDEX_SUFFIX)
    return index, index.with_name(index.name + ".json")


def store_fingerprint(path: str | os.PathLike[str], n_rows: int) -> dict[str, Any]:
    """Identity of a store file's content: size, row count and a hash of its Parquet footer.

    The footer holds the schema, key-value metadata and every row group's offsets and
    statistics, so any rewrite changes it; hashing it reads a few kB, not the file.
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        f.seek(max(0, size - 8))
        tail = f.read(8)
        footer_length = struct.unpack("<i", tail[:4])[0] if len(tail) == 8 and tail[4:] == b"PAR1" else 0
        f.seek(max(0, size - 8 - footer_length))
        footer = f.read(footer_length + 8)
    return {"size": size, "n_rows": int(n_rows), "footer_sha256": hashlib.sha256(footer).hexdigest()}


#: Rows an index search scans at least, by default (see :func:`default_nprobe`).
MIN_SCANNED_ROWS = 50_000


def default_nlist(n_rows: int) -> int:
    """Inverted-file cells: about sqrt(N) (faiss' rule of thumb), at least 1, at most 16384."""
    return int(min(16384, max(1, round(np.sqrt(max(n_rows, 1))))))


def default_nprobe(nlist: int, n_rows: int) -> int:
    """Cells scanned per query: a quarter of them, and enough for 50,000 rows; at least 8.

    With about sqrt(N) cells, a small store has small cells, and a query's 100 best rows spread over
    more of them: a quarter of the cells gave recall@100 0.89 at 100k rows but 0.999 at 1M, and half
    of them 0.96 at 100k (docs/search.md). Scanning 50,000 rows costs ~2 ms, so small stores get the
    wider scan. The index keeps fp16 codes in memory: even a quarter of a 1M-row index is scanned in
    tens of milliseconds, against seconds for decoding the store's Parquet pages in an exact search.
    """
    for_rows = -(-nlist * MIN_SCANNED_ROWS // max(n_rows, 1))  # ceil
    return int(min(nlist, max(8, nlist // 4, for_rows)))


@dataclass
class EmbeddingIndex:
    """A loaded index.

    Attributes:
        library: ``faiss``.
        index: the faiss index (ids are row positions in the store).
        nprobe: cells scanned per query.
        settings: the sidecar JSON.
    """

    library: str
    index: Any
    nprobe: int
    settings: dict[str, Any]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores (Q, k) and store row positions (Q, k) of the best rows (position -1: none)."""
        self.index.nprobe = self.nprobe
        scores, positions = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return scores, positions


def open_index(store: EmbeddingStore | StoreSet, nprobe: int | None = None) -> tuple[EmbeddingIndex | None, str | None]:
    """The store's index when present and fresh, else None and a one-line note (None: no index).

    A set of stores has an index when it is a directory (``DIR.index`` beside it); a glob or list has none.
    """
    if store.index_base is None:
        return None, None
    index_path, meta_path = index_paths(store.index_base)
    if not index_path.exists() and not meta_path.exists():
        return None, None
    rebuild = f"rebuild it with: geobimors index {store.path} --overwrite"
    try:
        settings = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None, f"index {index_path} has no readable {meta_path.name}; exact search ({rebuild})"
    if settings.get("store") != store.fingerprint():
        return None, f"index {index_path} is stale (the store changed after it was built); exact search ({rebuild})"
    key = (str(index_path), index_path.stat().st_mtime_ns, json.dumps(settings["store"], sort_keys=True))
    cached = _LOADED.get(key[0])
    if cached is not None and cached[0] == key:
        return EmbeddingIndex(LIBRARY, cached[1], int(nprobe or settings.get("nprobe", 8)), settings), None
    try:
        import faiss

        index = faiss.read_index(str(index_path))
    except ImportError:
        return None, "index present but faiss is not installed (pip install faiss-cpu); exact search"
    except RuntimeError as exc:
        return None, f"index {index_path} cannot be read ({str(exc).splitlines()[0][:120]}); exact search ({rebuild})"
    _LOADED[key[0]] = (key, index)  # one loaded index per file: later searches in this process skip the load
    return EmbeddingIndex(LIBRARY, index, int(nprobe or settings.get("nprobe", 8)), settings), None


@dataclass
class IndexSummary:
    """What ``geobimors index`` built."""

    path: Path
    n_rows: int
    nlist: int
    nprobe: int
    seconds: float
    bytes: int


def build_index(
    store: EmbeddingStore | StoreSet,
    overwrite: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int = 100_000,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> IndexSummary:
    """Build the index sidecar of a store, streaming it twice (a training sample, then every row).

    Args:
        store: the store.
        overwrite: replace an existing index.
        nlist: inverted-file cells (default :func:`default_nlist`).
        nprobe: cells scanned per query by default (default :func:`default_nprobe`).
        train_size: rows sampled (uniformly, seeded) to train the k-means cells.
        seed: sampling and k-means seed.
        threads: faiss threads (default: faiss' own).
        progress: called with the number of rows added after each batch.

    Raises:
        OutputError: if the index exists without ``overwrite`` or cannot be written.
    """
    try:
        import faiss
    except ImportError:
        raise InputError("geobimors index needs faiss: pip install faiss-cpu") from None
    if store.index_base is None:
        raise InputError(
            f"geobimors index writes the index beside one store file or a directory of store files, and {store.path} "
            "is a glob or a list; put the files in one directory and index it"
        )
    index_path, meta_path = index_paths(store.index_base)
    if (index_path.exists() or meta_path.exists()) and not overwrite:
        raise OutputError(f"index {index_path} already exists; pass --overwrite to rebuild it")
    if not os.access(index_path.parent, os.W_OK):
        raise OutputError(f"cannot write the index beside the store: {index_path.parent} is not writable")
    if store.n_rows == 0:
        raise InputError(f"{store.path} has no rows to index")
    if threads:
        faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    n_rows, dim = store.n_rows, int(store.meta.embedding_dim)
    nlist = min(nlist or default_nlist(n_rows), n_rows)
    nprobe = min(nprobe or default_nprobe(nlist, n_rows), nlist)
    rng = np.random.default_rng(seed)
    fraction = min(1.0, train_size / n_rows)
    sample = []
    for batch in store.iter_batches(columns=["embedding"]):
        vectors = store.embeddings_of(batch)
        sample.append(vectors[rng.random(len(vectors)) < fraction] if fraction < 1 else vectors)
    training = np.ascontiguousarray(np.concatenate(sample), dtype=np.float32)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # small stores: fewer points per cell is fine, no warning
    index.train(training)
    del training, sample
    added = 0
    for batch in store.iter_batches(columns=["embedding"]):
        vectors = np.ascontiguousarray(store.embeddings_of(batch), dtype=np.float32)
        index.add_with_ids(vectors, np.arange(added, added + len(vectors), dtype=np.int64))
        added += len(vectors)
        if progress is not None:
            progress(added)
    settings = {
        "format_version": FORMAT_VERSION,
        "library": LIBRARY,
        "library_version": faiss.__version__,
        "kind": "IVF-SQfp16",
        "metric": "inner_product",
        "nlist": nlist,
        "nprobe": nprobe,
        "train_size": int(min(train_size, n_rows)),
        "seed": seed,
        "embedding_dim": dim,
        "model": str(store.meta.model),
        "model_fingerprint": str(store.meta.model_fingerprint),
        "store": store.fingerprint(),
    }
    tmp_index = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
    tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    try:
        faiss.write_index(index, str(tmp_index))
        tmp_meta.write_text(json.dumps(settings, indent=2) + "\n")
        # The JSON goes last: a reader that sees it sees the finished index.
        os.replace(tmp_index, index_path)
        os.replace(tmp_meta, meta_path)
    except (OSError, RuntimeError) as exc:
        tmp_index.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise RunError(f"could not write the index {index_path}: {str(exc).splitlines()[0]}") from exc
    return IndexSummary(index_path, added, nlist, nprobe, time.perf_counter() - start, index_path.stat().st_size)

"""TEMPORARY stand-in of the store helper's reader (issue 13 contract), replaced on `git merge store`."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rasterio.crs import CRS

from geobimors.errors import InputError, ModelError


@dataclass(frozen=True)
class StoreMeta:
    """Parsed ``geobimors`` metadata."""

    model: str
    model_fingerprint: str
    embedding_dim: int
    grid: dict[str, Any]
    crs: CRS | None
    raw: dict[str, Any] = field(default_factory=dict)


class EmbeddingStore:
    """A GeoParquet embeddings store opened for reading."""

    def __init__(self, path: Path, meta: StoreMeta, n_rows: int) -> None:
        self.path = path
        self.meta = meta
        self.n_rows = n_rows

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        """Record batches of the store, streamed from its row groups."""
        yield from pq.ParquetFile(self.path).iter_batches(batch_size=batch_size, columns=columns)

    @staticmethod
    def embeddings_of(batch: pa.RecordBatch, column: str = "embedding") -> np.ndarray:
        """(N, D) float32 embeddings of a batch."""
        values = batch.column(column)
        width = values.type.list_size
        return np.asarray(values.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)

    def check_model(self, model: str, fingerprint: str) -> None:
        """Refuse another model."""
        if fingerprint != self.meta.model_fingerprint:
            raise ModelError(f"store {self.path} was embedded with model {self.meta.model!r}, not {model!r}")


def open_store(path: str | Path) -> EmbeddingStore:
    """Open a store."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"embeddings store not found: {p}")
    try:
        file = pq.ParquetFile(p)
    except Exception as exc:
        raise InputError(f"{p} is not a readable Parquet file ({exc})") from None
    kv = file.schema_arrow.metadata or {}
    if b"geobimors" not in kv:
        raise InputError(f"{p} is not a geobimors embeddings store (no geobimors metadata)")
    raw = json.loads(kv[b"geobimors"])
    grid = raw.get("grid", {})
    crs = CRS.from_user_input(grid["crs"]) if grid.get("crs") else None
    meta = StoreMeta(raw["model"], raw["model_fingerprint"], int(raw["embedding_dim"]), grid, crs, raw)
    return EmbeddingStore(p, meta, file.metadata.num_rows)

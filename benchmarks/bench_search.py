"""Search benchmarks: exact vs indexed query latency, recall@100, build time, memory vs store size.

Synthetic stores (clustered unit vectors, float16, real store files written with the store's own
writer) stand in for real embeddings: only timing, recall of the index and memory are measured
here; retrieval quality on real images is bench_retrieval.py.

    .venv/bin/python benchmarks/bench_search.py                 # 1M x 512 -> docs/benchmarks/search.json
    .venv/bin/python benchmarks/bench_search.py --rows 10000000 --dim 64
    .venv/bin/python benchmarks/bench_search.py --compare 100000  # faiss IVF vs HNSW vs usearch HNSW

The store files go to benchmarks/data/ (1 GB for 1M x 512) and are reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from affine import Affine
from rasterio.crs import CRS

from geobimors.embeddings.index import build_index, default_nlist, index_paths, open_index
from geobimors.embeddings.search import Query, exact_search, search_store
from geobimors.embeddings.store import StoreMeta, StoreWriter, chips_table, open_store

from common import DATA, ROOT, machine

OUT = ROOT / "docs" / "benchmarks" / "search.json"
N_CENTRES = 2000
SPREAD = 0.6  # noise norm relative to the unit cluster centre: neighbours at cosine ~0.75-0.9


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float = SPREAD) -> np.ndarray:
    """Unit vectors around random centres (embeddings of real scenes cluster by land cover)."""
    dim = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_store(rows: int, dim: int, seed: int = 0, spread: float = SPREAD) -> Path:
    """A store of ``rows`` chips on a square-ish grid, written once and reused."""
    path = DATA / (
        f"search-{rows}x{dim}.parquet" if spread == SPREAD else f"search-{rows}x{dim}-spread{spread:g}.parquet"
    )
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    n_cols = int(np.ceil(np.sqrt(rows)))
    n_rows = int(np.ceil(rows / n_cols))
    scene_transform = Affine(10, 0, 400000, 0, -10, 6000000)
    grid = {
        "crs": CRS.from_epsg(32632).to_wkt(),
        "scene_transform": list(scene_transform)[:6],
        "width": n_cols * 64,
        "height": n_rows * 64,
        "chip": [64, 64],
        "step": [64, 64],
        "n_rows": n_rows,
        "n_cols": n_cols,
        "transform": list(scene_transform * Affine.scale(64))[:6],
    }
    meta = StoreMeta(
        "synthetic", "0" * 16, dim, "float16", (64, 64), 10.0, (0, 0), (1, 2, 3), None, {}, grid, "synthetic"
    )
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CENTRES, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    np.save(path.with_name(path.stem + "-centres.npy"), centres)
    bbox = (400000.0, 6000000.0 - n_rows * 640, 400000.0 + n_cols * 640, 6000000.0)
    step = 65536
    with StoreWriter(path, meta, bbox=bbox, overwrite=True) as writer:
        for start in range(0, rows, step):
            index = np.arange(start, min(rows, start + step))
            r, c = index // n_cols, index % n_cols
            windows = np.stack([c * 64, r * 64, np.full_like(c, 64), np.full_like(c, 64)], axis=1)
            writer.write(
                chips_table(
                    meta, r, c, windows, np.ones(len(index), np.float32), clustered(rng, centres, len(index), spread)
                )
            )
        writer.close()
    return path


class PeakRSS:
    """Peak resident memory of this process above its level at the start, sampled every 5 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.process.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def added_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def percentiles(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(seconds, 50) * 1000),
        "p95_ms": float(np.percentile(seconds, 95) * 1000),
        "n": len(seconds),
    }


def queries_for(path: Path, n: int, seed: int, spread: float) -> np.ndarray:
    centres = np.load(path.with_name(path.stem + "-centres.npy"))
    return clustered(np.random.default_rng(seed), centres, n, spread)


def bench_store(
    rows: int, dim: int, exact_queries: int, index_queries: int, k: int = 100, spread: float = SPREAD
) -> dict[str, Any]:
    t0 = time.perf_counter()
    path = synthetic_store(rows, dim, spread=spread)
    written = time.perf_counter() - t0
    store = open_store(path)
    result: dict[str, Any] = {
        "rows": rows,
        "dim": dim,
        "dtype": "float16",
        "clusters": N_CENTRES,
        "spread": spread,
        "store_mb": path.stat().st_size / 2**20,
        "store_write_s": written,
    }
    queries = queries_for(path, max(exact_queries, index_queries), seed=1, spread=spread)
    # Exact: one query per streamed pass, as an interactive search runs.
    latencies = []
    peak = 0.0
    for q in range(exact_queries):
        with PeakRSS() as memory:
            start = time.perf_counter()
            search_store(store, [Query("q", queries[q])], k=k, use_index=False)
            latencies.append(time.perf_counter() - start)
        peak = max(peak, memory.added_mb)
    result["exact"] = {**percentiles(latencies), "peak_rss_added_mb": peak}
    print(f"{rows:,} x {dim}: exact {result['exact']}", flush=True)
    # Ground truth for recall: all index queries in one exact pass.
    with PeakRSS() as memory:
        start = time.perf_counter()
        top, _, _ = exact_search(store, queries[:index_queries], k)
        batch_seconds = time.perf_counter() - start
    truth = [set(top.sorted(q)[1].tolist()) for q in range(index_queries)]
    result["exact_batched"] = {
        "queries": index_queries,
        "seconds": batch_seconds,
        "per_query_ms": 1000 * batch_seconds / index_queries,
        "peak_rss_added_mb": memory.added_mb,
    }
    # Index: build, load, latency and recall@k at a few nprobe settings.
    index_file, meta_file = index_paths(path)
    index_file.unlink(missing_ok=True)
    meta_file.unlink(missing_ok=True)
    with PeakRSS() as memory:
        summary = build_index(store, overwrite=True)
    result["index_build"] = {
        "seconds": summary.seconds,
        "nlist": summary.nlist,
        "default_nprobe": summary.nprobe,
        "index_mb": summary.bytes / 2**20,
        "peak_rss_added_mb": memory.added_mb,
    }
    print(f"{rows:,} x {dim}: build {result['index_build']}", flush=True)
    sweeps = []
    for nprobe in sorted({max(1, summary.nlist // d) for d in (32, 16, 8, 4, 2)}):
        start = time.perf_counter()
        index, note = open_index(store, nprobe=nprobe)
        load = time.perf_counter() - start
        assert index is not None, note
        recalls, bare = [], []
        for q in range(index_queries):
            start = time.perf_counter()
            _, positions = index.search(queries[q : q + 1], k)
            bare.append(time.perf_counter() - start)
            recalls.append(len(truth[q] & set(positions[0].tolist())) / k)
        # End to end (search_store: index search + reading the hits' rows), at the default nprobe only.
        latencies = []
        if nprobe == summary.nprobe:
            for q in range(min(index_queries, 20)):
                start = time.perf_counter()
                found = search_store(store, [Query("q", queries[q])], k=k)
                latencies.append(time.perf_counter() - start)
                assert found.method.startswith("index")
        sweeps.append(
            {
                "nprobe": nprobe,
                "recall_at_100": float(np.mean(recalls)),
                "recall_at_100_min": float(np.min(recalls)),
                "index_load_s": load,
                **({"search_store_end_to_end": percentiles(latencies)} if latencies else {}),
                "index_search_only": percentiles(bare),
            }
        )
        print(f"{rows:,} x {dim}: nprobe {nprobe} {sweeps[-1]}", flush=True)
    result["index"] = sweeps
    return result


def compare_libraries(rows: int, dim: int = 512, n_queries: int = 100, k: int = 100) -> dict[str, Any]:
    """faiss IVF-SQfp16 (chosen) vs faiss HNSW vs usearch HNSW on the same vectors, in memory."""
    import faiss
    from usearch.index import Index

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((N_CENTRES, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = clustered(rng, centres, rows).astype(np.float16).astype(np.float32)
    q = clustered(rng, centres, n_queries)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :k]

    def measure(search: Any) -> dict[str, float]:
        latencies, recalls = [], []
        for i in range(n_queries):
            start = time.perf_counter()
            found = search(q[i])
            latencies.append(time.perf_counter() - start)
            recalls.append(len(set(truth[i].tolist()) & {int(v) for v in found}) / k)
        return {**percentiles(latencies), "recall_at_100": float(np.mean(recalls))}

    out: dict[str, Any] = {"rows": rows, "dim": dim, "queries": n_queries}
    nlist = default_nlist(rows)
    start = time.perf_counter()
    ivf = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    ivf.train(x[rng.choice(rows, min(rows, 100_000), replace=False)])
    ivf.add(x)
    out["faiss_ivf_sqfp16"] = {"build_s": time.perf_counter() - start, "nlist": nlist}
    for nprobe in (nlist // 16, nlist // 8):
        ivf.nprobe = nprobe
        out["faiss_ivf_sqfp16"][f"nprobe_{nprobe}"] = measure(lambda v: ivf.search(v[None], k)[1][0])
    print("faiss ivf", out["faiss_ivf_sqfp16"], flush=True)
    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 128
    hnsw.add(x)
    out["faiss_hnsw_m16"] = {"build_s": time.perf_counter() - start}
    for ef in (128, 256):
        hnsw.hnsw.efSearch = ef
        out["faiss_hnsw_m16"][f"ef_{ef}"] = measure(lambda v: hnsw.search(v[None], k)[1][0])
    print("faiss hnsw", out["faiss_hnsw_m16"], flush=True)
    start = time.perf_counter()
    index = Index(ndim=dim, metric="ip", dtype="f16", connectivity=16, expansion_add=128)
    index.add(np.arange(rows), x, threads=psutil.cpu_count() or 1)
    out["usearch_hnsw_m16_f16"] = {"build_s": time.perf_counter() - start}
    for ef in (128, 256):
        index.expansion_search = ef
        out["usearch_hnsw_m16_f16"][f"ef_{ef}"] = measure(lambda v: index.search(v, k).keys)
    print("usearch", out["usearch_hnsw_m16_f16"], flush=True)
    return out


def exact_memory(rows: int, dim: int, batch: int) -> dict[str, Any]:
    """Peak RSS of a fresh process that runs one exact search (run once per store and batch size)."""
    import resource

    store = open_store(synthetic_store(rows, dim))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    query = np.random.default_rng(0).standard_normal((1, dim)).astype(np.float32)
    start = time.perf_counter()
    exact_search(store, query, 100, batch_size=batch)
    return {
        "rows": rows,
        "batch": batch,
        "seconds": time.perf_counter() - start,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--exact-queries", type=int, default=10)
    parser.add_argument("--index-queries", type=int, default=100)
    parser.add_argument("--spread", type=float, default=SPREAD, help="Noise around the cluster centres.")
    parser.add_argument("--memory", type=int, default=None, help="Peak RSS of one exact search at this batch size.")
    parser.add_argument("--compare", type=int, default=None, help="Compare libraries at this many rows instead.")
    args = parser.parse_args()
    report = json.loads(OUT.read_text()) if OUT.exists() else {}
    report["machine"] = {**machine(), "note": "2-core AMD EPYC shared with other jobs, 24 GB, no GPU"}
    if args.memory:
        report.setdefault("exact_memory", []).append(exact_memory(args.rows, args.dim, args.memory))
    elif args.compare:
        report[f"compare_{args.compare}x{args.dim}"] = compare_libraries(args.compare, args.dim)
    else:
        key = f"store_{args.rows}x{args.dim}" + ("" if args.spread == SPREAD else f"_spread{args.spread:g}")
        report[key] = bench_store(args.rows, args.dim, args.exact_queries, args.index_queries, spread=args.spread)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

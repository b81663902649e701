"""usearch HNSW graph over the item vectors, and its on-disk cache shared by the instances of a
server (and a restarted one): keyed by a hash of the exact vectors and graph settings, built under
a folder lock so a second instance waits for the first and loads its file."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

GRAPH_CACHE_KEEP = 2  # graph files kept in the cache folder (a 1M-item graph is about 0.5 GB)
log = logging.getLogger(__name__)


class HnswGraph:
    """usearch HNSW over unit vectors, inner product; keys are the index's row numbers."""

    def __init__(self, dim: int, connectivity: int = 16, expansion_add: int = 64, expansion_search: int = 2048,
                 dtype: str = "f32", threads: int = 0) -> None:  # fmt: skip
        try:
            from usearch.index import Index
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("index 'hnsw' needs the usearch package (pip install 'usearch==2.26.6')") from e
        self.index = Index(ndim=dim, metric="ip", dtype=dtype, connectivity=connectivity,
                           expansion_add=expansion_add, expansion_search=expansion_search)  # fmt: skip
        self.expansion_search = expansion_search
        self.threads = threads
        self.settings = {"dim": dim, "connectivity": connectivity, "expansion_add": expansion_add, "dtype": dtype}
        self.loaded_from: Path | None = None  # the cache file it came from, if it was not built here

    @classmethod
    def over(cls, vectors: np.ndarray, cache: Path | None = None, **params) -> "HnswGraph":
        """A graph over `vectors` (keys 0..N-1): loaded from `cache` when a graph of the same
        vectors and settings is there, else built (and saved there)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        graph = cls(vectors.shape[1], **params)
        if cache is None:
            graph.upsert(np.arange(n), vectors, np.zeros(n, bool))
            return graph
        from usearch import __version__ as usearch_version

        h = hashlib.sha256(json.dumps({**graph.settings, "n": n, "usearch": usearch_version}, sort_keys=True).encode())
        h.update(memoryview(vectors).cast("B"))
        path = cache / f"hnsw-{h.hexdigest()[:32]}.usearch"
        try:
            cache.mkdir(parents=True, exist_ok=True)
            lock = open(cache / ".lock", "a+")
        except OSError as exc:  # an unusable folder costs a build, nothing else
            log.warning("graph cache %s unusable (%s); building without it", cache, exc)
            graph.upsert(np.arange(n), vectors, np.zeros(n, bool))
            return graph
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait and load it
            try:
                if path.exists():
                    try:
                        graph.index.load(str(path))
                        ok = len(graph.index) == n
                    except Exception as exc:  # noqa: BLE001 - a damaged file is rebuilt, never served
                        log.warning("graph cache file %s unreadable (%s); rebuilding", path, exc)
                        ok = False
                    if ok:
                        graph.loaded_from = path
                        try:
                            os.utime(path)  # recently used: kept by the pruning below
                        except OSError:
                            pass
                        return graph
                    graph = cls(vectors.shape[1], **params)
                graph.upsert(np.arange(n), vectors, np.zeros(n, bool))
                try:
                    tmp = path.with_suffix(".tmp")
                    graph.index.save(str(tmp))
                    os.replace(tmp, path)
                    old = sorted(cache.glob("hnsw-*.usearch"), key=lambda p: p.stat().st_mtime, reverse=True)
                    for stale in old[GRAPH_CACHE_KEEP:]:
                        stale.unlink(missing_ok=True)
                except OSError as exc:  # a full or read-only disk costs the next start a build, nothing else
                    log.warning("graph not saved to %s: %s", cache, exc)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return graph

    def __len__(self) -> int:
        return len(self.index)

    def upsert(self, rows: np.ndarray, vectors: np.ndarray, existing: np.ndarray) -> None:
        """Adds rows; rows flagged `existing` are in the graph already and are replaced."""
        if existing.any():
            self.index.remove(rows[existing].astype(np.uint64))
        self.index.add(rows.astype(np.uint64), np.ascontiguousarray(vectors, dtype=np.float32), threads=self.threads)

    def search(self, query: np.ndarray, count: int) -> np.ndarray:
        """Up to `count` candidate rows, best first (approximate)."""
        count = min(count, len(self.index))
        if count <= 0:
            return np.zeros(0, np.int64)
        self.index.expansion_search = max(self.expansion_search, count)
        # One query on the calling thread: a served request must not fan out over the cores.
        return np.asarray(self.index.search(query, count, threads=1).keys, dtype=np.int64)

    @property
    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)

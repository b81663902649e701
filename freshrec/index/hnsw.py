"""usearch HNSW graph over the item vectors. With an index cache (freshrec.index.cache) the graph
is built once per catalog, saved there, and every instance of the server maps that file
read-only: one copy in memory per server. Items added or changed after the load go into a small
in-memory graph of the instance's own (the overlay), searched beside the mapped one."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from freshrec.index.cache import cache_key, locked, publish, used

log = logging.getLogger(__name__)


class HnswGraph:
    """usearch HNSW over unit vectors, inner product; keys are the index's row numbers."""

    def __init__(self, dim: int, connectivity: int = 16, expansion_add: int = 64, expansion_search: int = 2048,
                 dtype: str = "f32", threads: int = 0) -> None:  # fmt: skip
        self.expansion_search = expansion_search
        self.threads = threads
        self.settings = {"dim": dim, "connectivity": connectivity, "expansion_add": expansion_add, "dtype": dtype}
        self.index = self._new()
        self.loaded_from: Path | None = None  # the cache file it came from, if it was not built here
        self.mapped: Path | None = None  # the cache file `index` maps read-only, if any
        self.overlay = None  # with a mapped graph: rows added or changed since, in memory
        self._added: set[int] = set()  # overlay rows past the mapped graph's (new items)

    def _new(self):
        try:
            from usearch.index import Index
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("index 'hnsw' needs the usearch package (pip install 'usearch==2.26.6')") from e
        st = self.settings
        return Index(ndim=st["dim"], metric="ip", dtype=st["dtype"], connectivity=st["connectivity"],
                     expansion_add=st["expansion_add"], expansion_search=self.expansion_search)  # fmt: skip

    @classmethod
    def over(cls, vectors: np.ndarray, cache: Path | None = None, **params) -> "HnswGraph":
        """A graph over `vectors` (keys 0..N-1): the cache's file for the same vectors and settings
        mapped when there is one, else built, saved there and mapped (built in memory alone
        when there is no usable cache)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        graph = cls(vectors.shape[1], **params)
        if cache is None:
            graph.upsert(np.arange(n), vectors, np.zeros(n, bool))
            return graph
        from usearch import __version__ as usearch_version

        path = cache / f"hnsw-{cache_key(vectors, **graph.settings, usearch=usearch_version)}.usearch"
        with locked(cache) as ok:
            if not ok:
                graph.upsert(np.arange(n), vectors, np.zeros(n, bool))
                return graph
            if path.exists():
                if graph._map(path, n):
                    graph.loaded_from = path
                    used(path)
                    return graph
                graph = cls(vectors.shape[1], **params)
            graph.upsert(np.arange(n), vectors, np.zeros(n, bool))
            try:
                tmp = path.with_suffix(".tmp")
                graph.index.save(str(tmp))
                publish(tmp, path, "hnsw")
            except OSError as exc:  # a full or read-only disk: this instance keeps its own graph
                log.warning("graph not saved to %s: %s", cache, exc)
                return graph
            mapped = cls(vectors.shape[1], **params)  # the built graph's memory goes; the file's pages are shared
            return mapped if mapped._map(path, n) else graph

    def _map(self, path: Path, n: int) -> bool:
        """Maps the graph file at `path` read-only; False if it is not an intact graph of `n` rows."""
        try:
            self.index.view(str(path))
            ok = len(self.index) == n
        except Exception as exc:  # noqa: BLE001 - a damaged file is rebuilt, never served
            log.warning("graph cache file %s unreadable (%s); rebuilding", path, exc)
            ok = False
        if ok:
            self.mapped = path
        return ok

    def __len__(self) -> int:
        return len(self.index) + len(self._added)

    def upsert(self, rows: np.ndarray, vectors: np.ndarray, existing: np.ndarray) -> None:
        """Adds rows; rows flagged `existing` are in the graph already and are replaced. A mapped
        graph is never written: the rows go into the overlay, and a changed row's old entry in the
        mapped graph can only propose the row as a candidate (candidates are rescored against the
        current vectors)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        keys = rows.astype(np.uint64)
        if self.mapped is None:
            if existing.any():
                self.index.remove(keys[existing])
            self.index.add(keys, vectors, threads=self.threads)
            return
        if self.overlay is None:
            self.overlay = self._new()
        again = np.asarray(self.overlay.contains(keys), dtype=bool)  # changed before since the load
        if again.any():
            self.overlay.remove(keys[again])
        self.overlay.add(keys, vectors, threads=self.threads)
        base = len(self.index)
        self._added.update(int(r) for r in rows.tolist() if r >= base)

    def search(self, query: np.ndarray, count: int) -> np.ndarray:
        """Up to `count` candidate rows from each of the graph and the overlay, approximately the
        nearest, with no row twice (in no particular order when there is an overlay)."""
        keys = self._search(self.index, query, count)
        if self.overlay is not None and len(self.overlay):
            keys = np.unique(np.concatenate([keys, self._search(self.overlay, query, count)]))
        return keys

    def _search(self, index, query: np.ndarray, count: int) -> np.ndarray:
        count = min(count, len(index))
        if count <= 0:
            return np.zeros(0, np.int64)
        index.expansion_search = max(self.expansion_search, count)
        # One query on the calling thread: a served request must not fan out over the cores.
        return np.asarray(index.search(query, count, threads=1).keys, dtype=np.int64)

    @property
    def memory_bytes(self) -> int:
        return int(self.index.memory_usage) + (int(self.overlay.memory_usage) if self.overlay is not None else 0)

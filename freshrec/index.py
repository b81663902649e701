"""In-memory retrieval index over the item table, refreshed incrementally from the store.

Each model instance keeps one; before serving it applies the items written since the version
it last saw, so an upserted item is retrievable on every instance with no rebuild.

Four kinds (`DeployConfig.index`, overridden by the FRESHREC_INDEX environment variable):

- ``exact``: matrix product over every item vector + partial top-k (torch, on the pipeline's
  device). Exact, no build step, no extra memory; memory-bound on CPU (100k items: ~3.5 ms).
- ``sq8``: the same full scan over int8 codes of the vectors (faiss `IndexScalarQuantizer`, one
  range per dimension), a quarter of the bytes; the index asks the scan for `k + excluded`
  (+25%) candidates, drops excluded rows, rescores the survivors exactly against the item
  matrix and keeps the best k, so scores are the true inner products (recall@200 vs exact: 1.0
  on the 100k and 1M catalogs, docs/benchmarks/index.md). No build step beyond encoding (one
  pass over the vectors); new items are encoded and appended, an updated item's codes are
  overwritten in place; the ranges are re-fitted (all codes re-encoded) when the catalog has
  doubled since the last fit. On a GPU device it falls back to exact.
- ``hnsw``: a usearch HNSW graph (inner product) over the same vectors, chosen by measurement
  (docs/benchmarks/index.md). It only proposes candidates, as the int8 scan does: `k + excluded`
  (+25%) neighbours, rescored exactly, the best k kept. New items are added to the graph
  as the refresh sees them; an upserted existing item is removed and re-added under the same
  key; nothing is ever rebuilt. The graph is built on an instance's first refresh (seconds at
  100k, minutes at 1M on 2 cores), or loaded from the graph cache below. On a GPU device it
  falls back to exact: the graph is CPU-only and the exact scan is one kernel there (GPU
  timings are unmeasured).
- ``auto`` (default): exact below `sq8_threshold` items (the scan is well under a millisecond
  there), sq8 below `ann_threshold`, hnsw from there on (graph built on crossing).

A graph built from scratch can be kept in a folder (`graph_cache`; the server uses
FRESHREC_INDEX_CACHE, default `<freshrec cache>/index`, "off" to disable), keyed by a hash of
the exact vectors and graph settings: the instances of one server (and a restarted one) load the
graph the first instance built instead of each building its own. Builds take a folder lock, so a
second instance waits for the first and loads its file; the newest `GRAPH_CACHE_KEEP` files are
kept. Items added after the build go into each instance's graph as usual.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from freshrec.store.base import Item, StateStore

INDEX_KINDS = ("exact", "sq8", "hnsw", "auto")
SQ8_THRESHOLD = 20_000  # "auto": below this, the exact scan costs well under a millisecond
ANN_THRESHOLD = 200_000  # "auto": from here the graph is faster than any full scan (see docs/benchmarks/index.md)
# sq8/hnsw propose k + excluded + k / RESCORE_SLACK candidates; all are rescored exactly and the
# best k kept, so a true top-k item ranked just past k by the approximation is still found.
RESCORE_SLACK = 4
GRAPH_CACHE_KEEP = 2  # graph files kept in the cache folder (a 1M-item graph is about 0.5 GB)
log = logging.getLogger(__name__)


def graph_cache_dir() -> Path | None:
    """The server's graph cache: FRESHREC_INDEX_CACHE, "off" for none, default <freshrec cache>/index."""
    value = os.environ.get("FRESHREC_INDEX_CACHE", "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    from freshrec.assets import cache_root

    return cache_root() / "index"


def resolve_kind(kind: str, n_items: int, sq8_threshold: int = SQ8_THRESHOLD, ann_threshold: int = ANN_THRESHOLD) -> str:
    """What a CPU index of `kind` searches with over `n_items` items: "exact", "sq8" or "hnsw"."""
    if kind != "auto":
        return kind
    return "hnsw" if n_items >= ann_threshold else "sq8" if n_items >= sq8_threshold else "exact"


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


class Sq8Scan:
    """A full scan over int8 codes of the item vectors: faiss `IndexScalarQuantizer` (QT_8bit,
    inner product), one [min, max] range per dimension fitted on the catalog with a margin;
    components outside it are clipped (the candidates are rescored exactly anyway). Codes are
    kept in row order, so faiss labels are the index's row numbers."""

    MARGIN = 0.1  # of each dimension's spread, on either side: room for items added later

    def __init__(self, dim: int) -> None:
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        self.fitted_on = 0  # rows in the catalog when the ranges were last fitted

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def fit(self, vectors: np.ndarray) -> None:
        """Fits the ranges on `vectors` (rows 0..N-1) and encodes them all, replacing any codes."""
        lo, hi = vectors.min(axis=0), vectors.max(axis=0)
        pad = self.MARGIN * (hi - lo) + 1e-3  # never a zero-width range
        self.index.reset()
        self.faiss.copy_array_to_vector(np.concatenate([lo - pad, hi - lo + 2 * pad]).astype(np.float32), self.index.sq.trained)
        self.index.is_trained = True
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.fitted_on = len(vectors)

    def upsert(self, rows: np.ndarray, vectors: np.ndarray, existing: np.ndarray) -> None:
        """New rows (numbered on from the current end, in order) are appended; rows flagged
        `existing` get their codes overwritten in place."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if (~existing).any():
            self.index.add(vectors[~existing])
        if existing.any():
            size = self.index.code_size
            codes = self.faiss.rev_swig_ptr(self.index.codes.data(), len(self) * size).reshape(len(self), size)
            codes[rows[existing]] = self.index.sa_encode(vectors[existing])

    def search(self, query: np.ndarray, count: int) -> np.ndarray:
        """The `count` rows of highest quantized inner product, best first."""
        count = min(count, len(self))
        if count <= 0:
            return np.zeros(0, np.int64)
        # One query on the calling thread: faiss opens an OpenMP region even for one query, and
        # a second (spinning) thread costs latency on small machines. faiss and torch share the
        # OpenMP runtime, so the caller's count is restored.
        threads = self.faiss.omp_get_max_threads()
        if threads != 1:
            self.faiss.omp_set_num_threads(1)
        try:
            _, labels = self.index.search(query[None], count)
        finally:
            if threads != 1:
                self.faiss.omp_set_num_threads(threads)
        return labels[0][labels[0] >= 0]

    @property
    def memory_bytes(self) -> int:
        return len(self) * int(self.index.code_size)


class ItemIndex:
    def __init__(self, dim: int, device: torch.device | str = "cpu", kind: str = "auto",
                 ann_threshold: int = ANN_THRESHOLD, graph_cache: Path | None = None,
                 sq8_threshold: int = SQ8_THRESHOLD, **hnsw: int | str) -> None:  # fmt: skip
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
        self.dim = dim
        self.device = torch.device(device)
        self.kind = kind
        self.ann_threshold = ann_threshold
        self.sq8_threshold = sq8_threshold
        self.hnsw_params = hnsw
        self.graph_cache = graph_cache
        self.item_ids: list[str] = []
        self.rows: dict[str, int] = {}
        self._matrix = torch.zeros(0, dim, device=self.device)  # capacity grows by doubling
        self.graph: HnswGraph | None = None
        self.scan: Sq8Scan | None = None
        self.version = 0
        # The last `self_check` since the graph or int8 scan was (re)built; None: not checked since.
        self.recall: float | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def matrix(self) -> torch.Tensor:
        """(N, D) item vectors, row i = item_ids[i]."""
        return self._matrix[: len(self.item_ids)]

    @property
    def serving_kind(self) -> str:
        """What searches now: "exact", "sq8" or "hnsw"."""
        return "hnsw" if self.graph is not None else "sq8" if self.scan is not None else "exact"

    def _wanted_kind(self) -> str:
        """The structure this catalog size asks for (a GPU device always scans exactly)."""
        if self.device.type != "cpu":
            return "exact"
        return resolve_kind(self.kind, len(self.item_ids), self.sq8_threshold, self.ann_threshold)

    def refresh(self, store: StateStore) -> int:
        """Applies items written since the last refresh; returns how many changed."""
        ids, vectors, version = store.item_vectors_since(self.version)
        if ids:
            self.apply_vectors(ids, vectors)
        self.version = version
        return len(ids)

    def apply(self, items: list[Item]) -> None:
        self.apply_vectors([it.item_id for it in items], np.stack([np.asarray(it.vector, dtype=np.float32) for it in items]))

    def apply_vectors(self, ids: list[str], vecs: np.ndarray) -> None:
        """Adds or replaces items: `ids` and their (N, D) vectors; the last write of an id wins."""
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        last = {item_id: j for j, item_id in enumerate(ids)}
        if len(last) != len(ids):
            ids, vecs = list(last), vecs[list(last.values())]
        existing = np.fromiter((item_id in self.rows for item_id in ids), dtype=bool, count=len(ids))
        need = len(self.item_ids) + int((~existing).sum())
        if need > self._matrix.shape[0]:
            grown = torch.zeros(max(need, 2 * self._matrix.shape[0], 1024), self.dim, device=self.device)
            grown[: len(self.item_ids)] = self.matrix
            self._matrix = grown
        rows = np.empty(len(ids), np.int64)
        for j, item_id in enumerate(ids):
            row = self.rows.get(item_id)
            if row is None:
                row = self.rows[item_id] = len(self.item_ids)
                self.item_ids.append(item_id)
            rows[j] = row
        self._matrix[torch.from_numpy(rows).to(self.device)] = torch.from_numpy(vecs).to(self.device)
        if self.graph is not None:
            self.graph.upsert(rows, vecs, existing)
            return
        wanted = self._wanted_kind()
        if wanted == "hnsw":
            self.scan = None
            self.graph = HnswGraph.over(self.matrix.cpu().numpy(), self.graph_cache, **self.hnsw_params)
            self.recall = None
        elif wanted == "sq8":
            if self.scan is None or len(self.item_ids) >= 2 * self.scan.fitted_on:
                self.scan = self.scan or Sq8Scan(self.dim)
                self.scan.fit(self.matrix.numpy())
                self.recall = None
            else:
                self.scan.upsert(rows, vecs, existing)

    def self_check(self, k: int = 200, queries: int = 32, seed: int = 0) -> float:
        """recall@k of the served search against the exact scan, on `queries` probe queries: the
        normalised midpoints of random pairs of catalog items (between items, as a user's vector
        is, not on one). 1.0 when the exact scan serves. Approximate recall follows the catalog's
        vectors, not only its size (docs/benchmarks/index.md), so the server runs this whenever a
        graph or int8 scan is built and reports it (freshrec_index_recall). The exact answers take
        one batched pass over the matrix; the served searches run one by one, as requests do. The
        result is kept in `recall` until the next build."""
        self.recall = self._recall(k, queries, seed)
        return self.recall

    def _recall(self, k: int, queries: int, seed: int) -> float:
        n = len(self.item_ids)
        k = min(k, n)
        if self.serving_kind == "exact" or k == 0:
            return 1.0
        g = torch.Generator().manual_seed(seed)
        pairs = torch.randint(0, n, (queries, 2), generator=g).to(self.device)
        probes = torch.nn.functional.normalize(self.matrix[pairs[:, 0]] + self.matrix[pairs[:, 1]], dim=-1)
        exact = torch.topk(probes @ self.matrix.T, k, dim=1).indices  # one pass over the matrix for all probes
        hits = sum(len(set(self.search(q, k, [])[0].tolist()) & set(e.tolist())) for q, e in zip(probes, exact))
        return hits / (k * queries)

    def search(self, query: torch.Tensor, k: int, exclude_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inner-product top-k. query (D,) -> rows (k',), scores (k',), best first;
        k' = min(k, items not excluded). Exact, or sq8/HNSW candidates rescored exactly."""
        banned = set(exclude_rows)
        k = min(k, len(self.item_ids) - len(banned))
        if k <= 0:
            return torch.zeros(0, dtype=torch.long, device=self.device), torch.zeros(0, device=self.device)
        proposer = self.graph if self.graph is not None else self.scan
        if proposer is not None:  # CPU only; numpy keeps this path single-threaded (no OpenMP stalls)
            q = query.detach().numpy().astype(np.float32, copy=False)
            cand = proposer.search(q, k + len(banned) + k // RESCORE_SLACK)
            if banned:
                cand = cand[~np.isin(cand, np.fromiter(banned, np.int64, len(banned)))]
            if len(cand) >= k:  # else too few came back: exact below
                scores = self.matrix.numpy()[cand] @ q  # exact inner products of the candidates
                order = np.argsort(-scores, kind="stable")[:k]
                return torch.from_numpy(cand[order]), torch.from_numpy(scores[order])
        scores = self.matrix @ query  # (N,)
        if banned:
            scores[torch.tensor(sorted(banned), dtype=torch.long, device=self.device)] = float("-inf")
        top = torch.topk(scores, k)
        return top.indices, top.values

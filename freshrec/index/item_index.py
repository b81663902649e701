"""In-memory retrieval index over the item table, refreshed incrementally from the store.

Each model instance keeps one; before serving it applies the items written since the version
it last saw, so an upserted item is retrievable on every instance with no rebuild.

Four kinds (`DeployConfig.index`, overridden by the FRESHREC_INDEX environment variable):

- ``exact``: matrix product over every item vector + partial top-k (numpy on the CPU, torch on
  a GPU). Exact, no build step, no extra memory; memory-bound on CPU (100k items: ~1-2 ms).
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

One copy per server, not per instance: with an index cache (`index_cache`; the server uses
DeployConfig.index_cache, FRESHREC_INDEX_CACHE, default `<freshrec cache>/index`, "off" to
disable), the first catalog load writes the item matrix to a file there and every instance (the
`recommend` instances, `upsert_items`) maps that file copy-on-write; an HNSW graph is built once,
saved there and mapped read-only by every instance (freshrec.index.cache). Files are keyed by a
hash of the exact vectors and settings, written under a folder lock (a second instance waits for
the first and maps its file). Items upserted after the load are an instance's own: their rows of
the matrix are private copies of the pages they fall in, and they go into a small in-memory graph
searched beside the mapped one (freshrec.index.hnsw), until a restart or the next version loads a
catalog that has them. The int8 codes are not shared (a quarter of the matrix). Growing past the
file's room (twice the loaded catalog) moves the matrix into the instance's own memory. Without a
usable cache, or on a GPU, each instance keeps its own copies.

One id map per catalog: the indexes of a pipeline (item vectors, content vectors, topic mixtures)
hold the same items in the same rows and share one `ItemRows` (id <-> row): at 1M items a map costs
~100 MiB of Python objects, which each index would otherwise hold again.
"""


from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from freshrec.arrays import arrays_for
from freshrec.index.cache import mapped_matrix
from freshrec.index.hnsw import HnswGraph
from freshrec.index.sq8 import Sq8Scan
from freshrec.store.base import Item, StateStore

INDEX_KINDS = ("exact", "sq8", "hnsw", "auto")
SQ8_THRESHOLD = 20_000  # "auto": below this, the exact scan costs well under a millisecond
ANN_THRESHOLD = 200_000  # "auto": from here the graph is faster than any full scan (see docs/benchmarks/index.md)
# sq8/hnsw propose k + excluded + k / RESCORE_SLACK candidates; all are rescored exactly and the
# best k kept, so a true top-k item ranked just past k by the approximation is still found.
RESCORE_SLACK = 4


def resolve_kind(kind: str, n_items: int, sq8_threshold: int = SQ8_THRESHOLD, ann_threshold: int = ANN_THRESHOLD) -> str:
    """What a CPU index of `kind` searches with over `n_items` items: "exact", "sq8" or "hnsw"."""
    if kind != "auto":
        return kind
    return "hnsw" if n_items >= ann_threshold else "sq8" if n_items >= sq8_threshold else "exact"


class ItemRows:
    """Item ids and their rows, in the order the items arrived: row i is item_ids[i]. Shared by
    the indexes that apply the same items in the same order (`ItemIndex(rows=...)`); each index
    then holds vectors for the rows it has been given."""

    def __init__(self) -> None:
        self.item_ids: list[str] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.item_ids)

    def assign(self, ids: list[str]) -> np.ndarray:
        """The rows of `ids` (distinct), new ids appended -> (N,) int64."""
        out = np.empty(len(ids), np.int64)
        rows, item_ids = self.rows, self.item_ids
        for j, item_id in enumerate(ids):
            row = rows.get(item_id)
            if row is None:
                row = rows[item_id] = len(item_ids)
                item_ids.append(item_id)
            out[j] = row
        return out


class ItemIndex:
    """The item matrix (numpy on the CPU, a torch tensor on a GPU: freshrec.arrays) and,
    by catalog size and `kind`, an int8 scan or a graph proposing candidates over it."""

    def __init__(self, dim: int, device: Any = "cpu", kind: str = "auto",
                 ann_threshold: int = ANN_THRESHOLD, index_cache: Path | None = None,
                 sq8_threshold: int = SQ8_THRESHOLD, rows: ItemRows | None = None, **hnsw: int | str) -> None:  # fmt: skip
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
        self.dim = dim
        self.xp = arrays_for(device)
        self.on_cpu = self.xp.kind == "numpy"
        self.kind = kind
        self.ann_threshold = ann_threshold
        self.sq8_threshold = sq8_threshold
        self.hnsw_params = hnsw
        self.index_cache = index_cache
        self.ids = rows if rows is not None else ItemRows()  # possibly shared with the pipeline's other indexes
        self.n = 0  # rows this index holds vectors for (the shared map may be ahead while another index applies)
        self._matrix = self.xp.zeros((0, dim), np.float32)  # capacity grows by doubling
        self.matrix_file: Path | None = None  # the cache file the matrix maps, if it does
        self.graph: HnswGraph | None = None
        self.scan: Sq8Scan | None = None
        self.version = 0
        # The last `self_check` since the graph or int8 scan was (re)built; None: not checked since.
        self.recall: float | None = None

    def __len__(self) -> int:
        return self.n

    @property
    def item_ids(self) -> list[str]:
        """Row -> item id (of the shared map: it may run ahead of this index's rows)."""
        return self.ids.item_ids

    @property
    def rows(self) -> dict[str, int]:
        """Item id -> row (of the shared map, as `item_ids`)."""
        return self.ids.rows

    @property
    def matrix(self):
        """(N, D) float32 item vectors, row i = item_ids[i]."""
        return self._matrix[: self.n]

    @property
    def serving_kind(self) -> str:
        """What searches now: "exact", "sq8" or "hnsw"."""
        return "hnsw" if self.graph is not None else "sq8" if self.scan is not None else "exact"

    def _wanted_kind(self) -> str:
        """The structure this catalog size asks for (a GPU device always scans exactly)."""
        if not self.on_cpu:
            return "exact"
        return resolve_kind(self.kind, self.n, self.sq8_threshold, self.ann_threshold)

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
        """Adds or replaces items: `ids` and their (N, D) vectors; the last write of an id wins.
        With a shared map, every index sharing it is given the same ids in the same order."""
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        last = {item_id: j for j, item_id in enumerate(ids)}
        if len(last) != len(ids):
            ids, vecs = list(last), vecs[list(last.values())]
        if not ids:
            return
        rows = self.ids.assign(ids)
        existing = rows < self.n
        need = max(self.n, int(rows.max()) + 1)
        first_load = self.n == 0
        if need > self._matrix.shape[0]:
            grown = self.xp.zeros((max(need, 2 * self._matrix.shape[0], 1024), self.dim), np.float32)
            grown[: self.n] = self.matrix
            self._matrix, self.matrix_file = grown, None
        self._matrix[self.xp.asarray(rows)] = self.xp.asarray(vecs)
        self.n = need
        if first_load and self.on_cpu and self.index_cache is not None:
            shared = mapped_matrix(self.matrix, self.index_cache)
            if shared is not None:
                self._matrix, self.matrix_file = shared
        if self.graph is not None:
            self.graph.upsert(rows, vecs, existing)
            return
        wanted = self._wanted_kind()
        if wanted == "hnsw":
            self.scan = None
            self.graph = HnswGraph.over(self.matrix, self.index_cache, **self.hnsw_params)
            self.recall = None
        elif wanted == "sq8":
            if self.scan is None or self.n >= 2 * self.scan.fitted_on:
                self.scan = self.scan or Sq8Scan(self.dim)
                self.scan.fit(self.matrix)
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
        n = self.n
        k = min(k, n)
        if self.serving_kind == "exact" or k == 0:
            return 1.0
        m = self.matrix  # CPU: the approximate structures exist only there
        pairs = np.random.default_rng(seed).integers(0, n, (queries, 2))
        probes = self.xp.normalize(m[pairs[:, 0]] + m[pairs[:, 1]])
        scores = probes @ m.T  # one pass over the matrix for all probes
        exact = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        hits = sum(len(set(self.search(q, k, [])[0].tolist()) & set(e.tolist())) for q, e in zip(probes, exact))
        return hits / (k * queries)

    def search(self, query, k: int, exclude_rows: list[int]):
        """Inner-product top-k. query (D,) -> rows (k',) int64, scores (k',), best first, as
        arrays of the index's kind; k' = min(k, items not excluded). Exact, or sq8/HNSW
        candidates rescored exactly."""
        xp = self.xp
        banned = set(exclude_rows)
        k = min(k, self.n - len(banned))
        if k <= 0:
            return xp.zeros((0,), np.int64), xp.zeros((0,), np.float32)
        proposer = self.graph if self.graph is not None else self.scan
        if proposer is not None:  # CPU only; numpy keeps this path single-threaded (no OpenMP stalls)
            q = np.asarray(query, dtype=np.float32)
            cand = proposer.search(q, k + len(banned) + k // RESCORE_SLACK)
            if banned:
                cand = cand[~np.isin(cand, np.fromiter(banned, np.int64, len(banned)))]
            if len(cand) >= k:  # else too few came back: exact below
                scores = self.matrix[cand] @ q  # exact inner products of the candidates
                order = np.argsort(-scores, kind="stable")[:k]
                return cand[order], scores[order]
        scores = self.matrix @ query  # (N,)
        if banned:
            scores[xp.asarray(np.fromiter(sorted(banned), np.int64, len(banned)))] = -np.inf
        return xp.topk(scores, k)

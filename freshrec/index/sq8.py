"""A full scan over int8 codes of the item vectors (faiss scalar quantiser)."""

from __future__ import annotations

import numpy as np


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

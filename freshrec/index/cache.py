"""The index cache: a folder shared by the instances of a server (and a restarted one) that holds
what the item indexes are made of, so that the server keeps one copy in memory, not one per
instance.

Two kinds of file, each keyed by a hash of the exact vectors and settings it was made from:

- ``hnsw-*.usearch``: an HNSW graph (freshrec.index.hnsw), memory-mapped read-only;
- ``matrix-*.f32``: an item matrix (N x D float32, then room for as many rows again as a sparse
  tail), memory-mapped copy-on-write: the instances share its pages until one writes a row (an
  upserted item: that page becomes the instance's own).

A file is written under a folder lock (a second instance waits for the first and maps its file),
to a temporary name and renamed into place; it is never changed after. The least recently used
files beyond `CACHE_KEEP` per kind are deleted; a deleted file stays readable to the processes that
have it mapped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Files kept per kind: a server maps two graphs (item and content vectors) and three matrices
# (those two and the topic mixtures); during a rollout the second version adds its own item
# vectors' graph and matrix (content vectors and topic mixtures are the same in every version).
# A 1M-item graph is about 0.4 GB, a matrix 0.25 GB.
CACHE_KEEP = {"hnsw": 3, "matrix": 4}
log = logging.getLogger(__name__)


def cache_key(vectors: np.ndarray, **settings) -> str:
    """Hash of `vectors` (C-contiguous float32) and `settings`."""
    h = hashlib.sha256(json.dumps({**settings, "shape": list(vectors.shape)}, sort_keys=True).encode())
    h.update(memoryview(vectors).cast("B"))
    return h.hexdigest()[:32]


@contextmanager
def locked(cache: Path) -> Iterator[bool]:
    """Holds the folder's lock (one writer at a time; the others wait, then use its file). Yields
    False, holding nothing, when the folder cannot be used: the caller does without the cache."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / ".lock", "a+")
    except OSError as exc:
        log.warning("index cache %s unusable (%s); this instance keeps its own copies", cache, exc)
        yield False
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def used(path: Path) -> None:
    """Marks a file recently used (kept by the pruning)."""
    try:
        os.utime(path)
    except OSError:
        pass


def publish(tmp: Path, path: Path, kind: str) -> None:
    """Renames a written file into place and prunes the kind's least recently used files."""
    os.replace(tmp, path)
    files = sorted(path.parent.glob(f"{kind}-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in files[CACHE_KEEP[kind] :]:
        if stale.suffix != ".tmp":
            stale.unlink(missing_ok=True)


def mapped_matrix(matrix: np.ndarray, cache: Path) -> tuple[np.ndarray, Path] | None:
    """`matrix` (N, D float32) as a copy-on-write mapping of a cache file with room for 2N rows
    (at least 1024), and that file; the file is written if the cache has no intact one (a file
    whose first N rows differ from `matrix` is written again, never served). None when the
    folder or the file cannot be used: the caller keeps its own copy."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = matrix.shape
    path = cache / f"matrix-{cache_key(matrix)}.f32"
    rows = max(2 * n, 1024)
    with locked(cache) as ok:
        if not ok:
            return None
        try:
            mapped = _map(path, rows, d) if path.exists() else None
            if mapped is None or not np.array_equal(mapped[:n], matrix):
                if path.exists():
                    log.warning("index cache file %s damaged; writing it again", path)
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    f.write(memoryview(matrix).cast("B"))
                    f.truncate(rows * d * 4)  # the room for added rows is a hole: no disk until written
                publish(tmp, path, "matrix")
                mapped = _map(path, rows, d)
            else:
                used(path)
        except (OSError, ValueError) as exc:  # a full or read-only disk: this instance keeps its own copy
            log.warning("item matrix not mapped from %s: %s", cache, exc)
            return None
    return mapped, path


def _map(path: Path, rows: int, d: int) -> np.ndarray | None:
    if path.stat().st_size != rows * d * 4:
        return None
    # np.asarray: a plain ndarray over the mapping (the memmap stays alive as its base).
    return np.asarray(np.memmap(path, dtype=np.float32, mode="c", shape=(rows, d)))

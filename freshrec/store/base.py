"""The store interface. Implementations: SQLite (embedded default) and Redis (shared by replicas).

Contract every implementation keeps:
- `add_events` / `upsert_items` return only after the write is durable; a write that returned is
  visible to every later read from any process sharing the store (read-your-writes).
- `add_events` is idempotent per `event_id`: a retried event is stored once. An event id belongs to
  its user (a retry carries the same user): the same id under two users may be two events (Redis
  keeps ids in each user's slot; SQLite's are global). Redis forgets ids after `event_id_ttl`.
- Events may name items that do not exist yet: they are stored and ignored by recommendations
  until the item exists.
- Item vectors are kept per vector space (a model version number, an int >= 1): space 1 holds
  the vectors written by `freshrec build`, spaces >= 2 the vectors of later model versions, so
  that every loaded version reads its own. Writing an item (`upsert_items`) puts its vector into
  one space and removes its vectors from every other (they were computed from its previous
  text). An empty vector means "missing in that space".
- Every stored event has an arrival number: increasing in arrival order, never reused (a number
  may be skipped, e.g. by an ignored retry or a forgotten user). `freshrec update` cuts its data
  windows by these numbers, never by positions in `events()`, so removing events moves no cut-off.
- `forget_user` removes a user's events, seen items and first-arrival entry durably; the ids of
  the events it removes stay behind as bare idempotency keys, so that a client retrying an event
  acknowledged before the removal cannot bring the user back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import index
from typing import Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np


class StoreUnavailable(RuntimeError):
    """The state store cannot be reached or did not accept a write in time (maps to UNAVAILABLE)."""


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    value: float = float("nan")
    event_id: str | None = None


@dataclass(frozen=True)
class Item:
    item_id: str
    text: str
    vector: np.ndarray  # (D,) float32, unit norm
    metadata: str = "{}"  # JSON object
    id_index: int = 0  # learned id row of the item tower; 0 = text only
    content: np.ndarray | None = None  # (Ec,) float32 content vector (text encoder's content_vector); None: none
    embedding: np.ndarray | None = None  # (E,) float32 text embedding (the text encoder's, 384-d); None: none
    topics: np.ndarray | None = None  # (K,) float32 topic mixture (freshrec.models.topics); None: none


@dataclass
class CatalogBlock:
    """What the pipeline's indexes need of the items written since a version: ids, collaborative
    vectors (N, D) of one vector space, content vectors and topic mixtures (N, Ec) and (N, K)
    (zero rows for items stored without one, (N, 0) when none has one), in one order, the
    catalog version they bring an index to, and which items have no vector in that space
    (`missing`, (N,) bool: their rows of `vectors` are zeros; `vectors` is (N, 0) when every row
    is missing)."""

    item_ids: list[str]
    vectors: np.ndarray
    contents: np.ndarray
    version: int
    missing: np.ndarray
    topics: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))


def stack_blobs(blobs: Sequence[bytes | None]) -> np.ndarray:
    """float32 byte strings -> (N, d) rows, one copy; a missing or empty blob is a zero row."""
    dim = next((len(b) // 4 for b in blobs if b), 0)
    out = np.zeros((len(blobs), dim), np.float32)
    for j, b in enumerate(blobs):
        if b:
            out[j] = np.frombuffer(b, dtype=np.float32)
    return out


def stack_vectors(blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """float32 byte strings of one vector space -> ((N, D) writable rows, (N,) bool missing), one
    join (it matters at 1M items): a missing (None or empty) blob is a zero row, and the rows are
    (N, 0) when every blob is missing."""
    n = len(blobs)
    if all(blobs):  # the common case
        return np.frombuffer(bytearray().join(blobs), dtype=np.float32).reshape(n, -1 if n else 0), np.zeros(n, bool)  # writable
    missing = np.fromiter((not b for b in blobs), dtype=bool, count=n)
    zero = bytes(next((len(b) for b in blobs if b), 0))
    return np.frombuffer(bytearray().join([b or zero for b in blobs]), dtype=np.float32).reshape(n, -1), missing


def check_space(space: int) -> int:
    """A vector space number (int >= 1), or ValueError."""
    try:
        n = -1 if isinstance(space, bool) else index(space)
    except TypeError:
        n = -1
    if n < 1:
        raise ValueError(f"invalid vector space {space!r}: an int >= 1")
    return n


def check_vectors(item_ids: Sequence[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """`put_vectors`' arguments as a list and (N, D) float32 rows (D > 0), or ValueError."""
    ids, vectors = list(item_ids), np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids) or (ids and vectors.shape[1] == 0):
        raise ValueError(f"expected ({len(ids)}, D) vectors for {len(ids)} item ids, got shape {vectors.shape}")
    return ids, vectors


@dataclass
class UserHistory:
    """A user's latest events (oldest first) and every item they ever interacted with."""

    item_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


class StateStore(Protocol):
    def add_events(self, events: Sequence[Event]) -> int:
        """Stores events durably; returns how many were new (retries by event_id are not)."""

    def user_history(self, user_id: str, limit: int) -> UserHistory:
        """The latest `limit` events of a user, oldest first, plus the set of seen items."""

    def upsert_items(self, items: Sequence[Item], space: int = 1) -> int:
        """Inserts or replaces items (text, metadata, id row, content, embedding, topics) under a new
        catalog version, their vectors written into vector `space`; in the same transaction the
        items' vectors in every other space are removed (for a space >= 2 the space-1 vector
        becomes empty). An empty vector stores none. Returns how many were written."""

    def items_since(self, version: int, space: int = 1) -> tuple[list[Item], int]:
        """Items written after catalog `version` (vectors of `space`; a missing one is an empty
        (0,) array), and the current version. Lets every model instance refresh its retrieval
        index incrementally before serving."""

    def item_vectors_since(self, version: int, space: int = 1) -> tuple[list[str], np.ndarray, int]:
        """What the retrieval index needs of `items_since`, and only that: the ids and their
        vectors in `space` ((N, D) float32, one block, in the same order; zero rows for missing
        vectors) and the current version. Every model instance refreshes its index with it before
        serving; at 1M items the texts and metadata it leaves out are most of what `items_since` reads."""

    def catalog_since(self, version: int, space: int = 1) -> CatalogBlock:
        """`item_vectors_since` with the content vectors and topic mixtures beside the vectors and
        the rows missing in `space`, read in one snapshot so that both indexes of a pipeline hold the same items in
        the same rows."""

    def item_id_indices(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Learned id rows of known items (unknown items are absent)."""

    def item_texts(self, item_ids: Sequence[str]) -> dict[str, str]:
        """Texts of known items (unknown items are absent): the names an explanation shows."""

    def popular_items(self, limit: int, window: int) -> list[tuple[str, float]]:
        """Most frequent items over the latest `window` events: the cold-start fallback."""

    def forget_user(self, user_id: str) -> int:
        """Removes every stored event of `user_id` (with its seen items, its place in `user_ids`
        and its share of the popularity window) durably before it returns; the removed events'
        ids are kept, so a retry of one is ignored as a duplicate. Returns how many events were
        removed: 0 for an unknown or already forgotten user (the call is idempotent)."""

    def count_events(self) -> int:
        """Stored events (a forgotten user's are no longer counted)."""

    def count_items(self) -> int: ...

    # -- for tools (copies, benchmarks, the demo); never on a request path ----------------------
    def events(self) -> Iterator[Event]:
        """Every stored event in arrival order, with its event id when it was given one."""

    def numbered_events(self) -> Iterator[tuple[int, Event]]:
        """`events()` with each event's arrival number (increasing; gaps where events were
        removed or retries ignored)."""

    def last_arrival(self) -> int:
        """The arrival number of the newest event ever stored (0: none), removed ones included:
        every event stored later gets a higher one."""

    def user_ids(self) -> list[str]:
        """Every user with an event, in the order of their first event's arrival."""

    def load_items(self, batches: Iterable[Sequence[Item]], space: int = 1) -> int:
        """Bulk load: writes every batch (as `upsert_items(batch, space)` would) and returns the
        number written once all of it is durable. Faster than `upsert_items` per batch; for tools
        that fill a store (scaled catalogs, copies), not for serving."""

    def put_vectors(self, space: int, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        """Writes the (N, D) vectors of existing items into `space` (1 included) without changing
        the catalog version or any other field: the update tool fills a new model version's space
        before that version is loaded. Unknown items are skipped; returns how many were written,
        once durable (in batches: a failure may leave earlier batches written). A vector computed
        from an item's text that an `upsert_items` replaced meanwhile is written all the same: the
        caller recomputes the items whose catalog version moved."""

    def drop_vectors(self, space: int) -> int:
        """Removes every vector of a space >= 2 (durably); returns how many. Space 1: ValueError."""

    def vector_spaces(self) -> dict[int, int]:
        """Each space holding at least one vector -> how many items have a vector in it."""

    def item_inputs(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """What an item tower needs to compute vectors of items: their learned id rows ((N,)
        int64) and text embeddings ((N, E) float32; zero rows for items stored without one,
        (N, 0) when none has one); unknown items get id row 0 and a zero row."""

    def assign_id_rows(self, rows: Mapping[str, int]) -> int:
        """Sets the learned id row of existing items (unknown ones are skipped) without changing
        the catalog version or vectors; returns how many were set, once durable."""

    def close(self) -> None: ...

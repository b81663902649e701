"""The store interface. Implementations: SQLite (embedded default) and Redis (shared by replicas).

Contract every implementation keeps:
- `add_events` / `upsert_items` return only after the write is durable; a write that returned is
  visible to every later read from any process sharing the store (read-your-writes).
- `add_events` is idempotent per `event_id`: a retried event is stored once.
- Events may name items that do not exist yet: they are stored and ignored by recommendations
  until the item exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

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


@dataclass
class CatalogBlock:
    """What the pipeline's indexes need of the items written since a version: ids, collaborative
    vectors (N, D) and content vectors (N, Ec; zero rows for items stored without one, (N, 0)
    when none has one), in one order, and the catalog version they bring an index to."""

    item_ids: list[str]
    vectors: np.ndarray
    contents: np.ndarray
    version: int


def stack_blobs(blobs: Sequence[bytes | None]) -> np.ndarray:
    """float32 byte strings -> (N, d) rows, one copy; a missing or empty blob is a zero row."""
    dim = next((len(b) // 4 for b in blobs if b), 0)
    out = np.zeros((len(blobs), dim), np.float32)
    for j, b in enumerate(blobs):
        if b:
            out[j] = np.frombuffer(b, dtype=np.float32)
    return out


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

    def upsert_items(self, items: Sequence[Item]) -> int:
        """Inserts or replaces items (text, metadata, vector); returns how many were written."""

    def items_since(self, version: int) -> tuple[list[Item], int]:
        """Items written after catalog `version`, and the current version. Lets every model
        instance refresh its retrieval index incrementally before serving."""

    def item_vectors_since(self, version: int) -> tuple[list[str], np.ndarray, int]:
        """What the retrieval index needs of `items_since`, and only that: the ids and their
        vectors ((N, D) float32, one block, in the same order) and the current version. Every model
        instance refreshes its index with it before serving; at 1M items the texts and metadata
        it leaves out are most of what `items_since` reads."""

    def catalog_since(self, version: int) -> CatalogBlock:
        """`item_vectors_since` with the content vectors beside the vectors, read in one
        snapshot so that both indexes of a pipeline hold the same items in the same rows."""

    def item_id_indices(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Learned id rows of known items (unknown items are absent)."""

    def popular_items(self, limit: int, window: int) -> list[tuple[str, float]]:
        """Most frequent items over the latest `window` events: the cold-start fallback."""

    def count_events(self) -> int: ...

    def count_items(self) -> int: ...

    # -- for tools (copies, benchmarks, the demo); never on a request path ----------------------
    def events(self) -> Iterator[Event]:
        """Every stored event in arrival order, with its event id when it was given one."""

    def user_ids(self) -> list[str]:
        """Every user with an event, in the order of their first event's arrival."""

    def load_items(self, batches: Iterable[Sequence[Item]]) -> int:
        """Bulk load: writes every batch (as `upsert_items` would) and returns the number written
        once all of it is durable. Faster than `upsert_items` per batch; for tools that fill a
        store (scaled catalogs, copies), not for serving."""

    def close(self) -> None: ...

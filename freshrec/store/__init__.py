"""State behind one interface: events, user histories, the item table and item vectors.
Backends: SQLite (`sqlite`, the embedded default) and Redis or Redis Cluster (`redis_store`, shared by replicas)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from freshrec.store.base import Event, Item, StateStore, StoreUnavailable, UserHistory

__all__ = ["Event", "Item", "StateStore", "StoreUnavailable", "UserHistory", "copy_state", "open_store"]


def open_store(url: str, base_dir: Path | None = None) -> StateStore:
    """Opens a store from a URL: `sqlite:///relative/or/absolute.db` (relative to base_dir), or
    `redis://[:password@]host:port/db` / `rediss://...` (Redis shared by every server), or
    `redis+cluster://[:password@]host:port` / `rediss+cluster://...` (a Redis Cluster through any of
    its nodes); Redis query options `prefix` (key prefix, default `freshrec:`), `timeout` (socket
    connect/read seconds, default 1), `window` (events kept for popularity, default 10000),
    `event_id_ttl` (seconds an event id is remembered, default 7 days), `lease` (seconds reserved
    arrival numbers stay usable, default 1)."""
    if url.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        from freshrec.store.redis_store import RedisStore

        return RedisStore(url)
    if url.startswith("sqlite:///"):
        from freshrec.store.sqlite import SQLiteStore

        path = Path(url[len("sqlite:///") :])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return SQLiteStore(path)
    raise ValueError(f"unsupported state store URL {url!r}; expected sqlite:///path, redis://host:port/db or redis+cluster://host:port")


def _chunks(xs: Iterable, size: int) -> Iterable[list]:
    chunk: list = []
    for x in xs:
        chunk.append(x)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def copy_state(source: StateStore, target: StateStore, batch: int = 500) -> tuple[int, int]:
    """Copies every item (text, metadata, id row, content, embedding, and its vector in every
    vector space) and every event of `source` into `target` (any two backends): items in catalog
    order with their space-1 vectors (an item without one is copied without one), then each space
    >= 2 of them, events in arrival order with their ids, so a second copy adds nothing. Returns
    (items written, events newly stored)."""
    items, _ = source.items_since(0)
    n_items = target.load_items(_chunks(items, batch))
    for space in sorted(s for s in source.vector_spaces() if s > 1):
        block = source.catalog_since(0, space)
        have = ~block.missing
        target.put_vectors(space, [i for i, ok in zip(block.item_ids, have) if ok], block.vectors[have])
    n_events = sum(target.add_events(chunk) for chunk in _chunks(source.events(), batch))
    return n_items, n_events

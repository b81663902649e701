"""SQLite state store: durability contract, idempotency, read-your-writes across processes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import numpy as np
import pytest

from freshrec.store import Event, Item, StoreUnavailable, open_store


def _vec(seed: int, dim: int = 4) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_events_are_idempotent_by_event_id(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    e = [Event("u", "i1", "click", 10.0, event_id="a"), Event("u", "i2", "click", 11.0, event_id="b")]
    assert store.add_events(e) == 2
    assert store.add_events(e) == 0
    assert store.add_events([Event("u", "i3", "click", 12.0)] * 2) == 2  # no id: each is new
    assert store.count_events() == 4


def test_user_history_is_latest_first_limited_and_time_ordered(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    store.add_events([Event("u", f"i{t}", "rate", float(t), value=float(t % 5)) for t in (5, 1, 3, 2, 4)])
    store.add_events([Event("other", "x", "click", 9.0)])
    h = store.user_history("u", limit=3)
    assert h.item_ids == ["i3", "i4", "i5"]
    assert h.timestamps == [3.0, 4.0, 5.0]
    assert h.seen == {"i1", "i2", "i3", "i4", "i5"}
    assert store.user_history("nobody", 3).item_ids == []


def test_items_since_sees_inserts_and_updates_in_version_order(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    store.upsert_items([Item("a", "text a", _vec(1)), Item("b", "text b", _vec(2), id_index=7)])
    items, v1 = store.items_since(0)
    assert [i.item_id for i in items] == ["a", "b"] and v1 == 1
    store.upsert_items([Item("a", "text a2", _vec(3))])
    items, v2 = store.items_since(v1)
    assert [(i.item_id, i.text) for i in items] == [("a", "text a2")] and v2 == 2
    np.testing.assert_array_equal(items[0].vector, _vec(3))
    assert store.items_since(v2) == ([], v2)
    assert store.item_id_indices(["a", "b", "zz"]) == {"a": 0, "b": 7}


def _writer(path: str, start: int, n: int) -> None:
    store = open_store(f"sqlite:///{path}")
    for i in range(start, start + n):
        store.add_events([Event(f"u{i % 3}", f"i{i}", "click", float(i), event_id=f"e{i}")])
    store.close()


def test_concurrent_writers_in_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "s.db")
    open_store(f"sqlite:///{path}").close()
    procs = [mp.get_context("spawn").Process(target=_writer, args=(path, k * 100, 100)) for k in range(3)]
    for p in procs:
        p.start()
    reader = open_store(f"sqlite:///{path}")
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert reader.count_events() == 300  # every write of another process is visible at once


def test_wal_mode_and_full_sync(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_locked_store_fails_the_write_as_unavailable(tmp_path):
    path = tmp_path / "s.db"
    store = open_store(f"sqlite:///{path}")
    store.db.execute("PRAGMA busy_timeout=100")
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(StoreUnavailable):
        store.add_events([Event("u", "i", "click", 1.0, event_id="x")])
    blocker.execute("ROLLBACK")
    assert store.add_events([Event("u", "i", "click", 1.0, event_id="x")]) == 1  # nothing half-written


def test_unknown_store_url_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported state store URL"):
        open_store("postgres://x")

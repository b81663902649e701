"""SQLite-specific behaviour of the state store (the shared contract is in test_store_contract.py)."""

from __future__ import annotations

import sqlite3

import pytest

from freshrec.store import Event, StoreUnavailable, open_store


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

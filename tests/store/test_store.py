"""SQLite-specific behaviour of the state store (the shared contract is in test_store_contract.py)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from freshrec.store import Event, Item, StoreUnavailable, open_store


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


def test_an_old_state_without_embeddings_or_vector_spaces_opens_and_gains_them(tmp_path):
    """A state written before content vectors, text embeddings and vector spaces: the columns and
    the `vectors` table are added at open; its items read back with none of them."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(str(path))
    old.execute("CREATE TABLE items (item_id TEXT PRIMARY KEY, text TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', "
                "id_index INTEGER NOT NULL DEFAULT 0, vector BLOB NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL)")  # fmt: skip
    v = np.ones(4, np.float32) / 2
    old.execute("INSERT INTO items VALUES ('a', 'text a', '{}', 3, ?, 1, 0.0)", (v.tobytes(),))
    old.commit()
    old.close()
    store = open_store(f"sqlite:///{path}")
    assert {"content", "embedding"} <= {r[1] for r in store.db.execute("PRAGMA table_info(items)")}
    (item,), version = store.items_since(0)
    assert version == 1 and item.embedding is None and item.content is None and item.id_index == 3
    np.testing.assert_array_equal(item.vector, v)
    assert store.put_vectors(2, ["a"], v[None] * 2) == 1 and store.vector_spaces() == {1: 1, 2: 1}
    store.upsert_items([Item("b", "text b", v, embedding=v[:3])])
    assert store.item_inputs(["a", "b"])[1].tolist() == [[0.0] * 3, [0.5] * 3]
    store.close()
    assert open_store(f"sqlite:///{path}").vector_spaces() == {1: 2, 2: 1}  # reopens as is


def test_vector_space_layout(tmp_path):
    """Space 1 stays in items.vector (an empty blob: missing); spaces >= 2 are rows of `vectors`."""
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    v = np.ones(4, np.float32) / 2
    store.upsert_items([Item("a", "text a", v), Item("b", "text b", v)], space=2)
    store.put_vectors(3, ["a"], v[None])
    assert store.db.execute("SELECT item_id, length(vector) FROM items ORDER BY item_id").fetchall() == [("a", 0), ("b", 0)]
    assert store.db.execute("SELECT space, item_id FROM vectors ORDER BY space, item_id").fetchall() == [(2, "a"), (2, "b"), (3, "a")]


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_catalog_since_reads_in_chunks_as_in_one(tmp_path, monkeypatch, chunk):
    """catalog_since fetches a chunk of rows at a time (bounded memory at 1M items): every chunk
    size gives the one-fetch block, also where a chunk's rows all lack a vector, content or mixture."""
    import freshrec.store.sqlite as sqlite_store

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    rng = np.random.default_rng(0)
    vec = lambda d: rng.standard_normal(d).astype(np.float32)  # noqa: E731
    store.upsert_items([Item("a", "a", np.zeros(0, np.float32)), Item("b", "b", np.zeros(0, np.float32)),
                        Item("c", "c", vec(4), content=vec(3), topics=vec(5)), Item("d", "d", vec(4)),
                        Item("e", "e", np.zeros(0, np.float32), content=vec(3))])  # fmt: skip
    whole = store.catalog_since(0)
    assert whole.vectors.shape == (5, 4) and whole.contents.shape == (5, 3) and whole.topics.shape == (5, 5)
    monkeypatch.setattr(sqlite_store, "CATALOG_CHUNK", chunk)
    for version in (0, whole.version - 1):
        one = store.catalog_since(version)
        monkeypatch.setattr(sqlite_store, "CATALOG_CHUNK", 10_000)
        ref = store.catalog_since(version)
        monkeypatch.setattr(sqlite_store, "CATALOG_CHUNK", chunk)
        assert one.item_ids == ref.item_ids and one.version == ref.version
        for field in ("vectors", "contents", "topics", "missing"):
            np.testing.assert_array_equal(getattr(one, field), getattr(ref, field))
            assert getattr(one, field).shape == getattr(ref, field).shape
    assert store.catalog_since(whole.version).item_ids == []

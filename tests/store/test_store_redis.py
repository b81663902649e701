"""Redis-specific behaviour of the state store on a real redis-server: URL options, the kept
popularity window, durability across SIGKILL, fast UNAVAILABLE (the shared contract is in
test_store_contract.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from freshrec.store import Event, Item, StoreUnavailable, open_store
from freshrec.store.redis_store import RedisStore


def _vec(seed: int, dim: int = 4) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_open_store_parses_redis_urls(redis_server):
    store = open_store(redis_server.url + "?prefix=t1:&timeout=0.5&window=7")
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.timeout_s, store.window) == ("t1:", 0.5, 7)
    store.add_events([Event("u", "i", "click", 1.0)])
    assert store.db.exists("t1:{g}:seq") and not store.db.exists("freshrec:{g}:seq")
    other = open_store(redis_server.url)  # default prefix: a separate namespace
    assert other.prefix == "freshrec:" and other.count_events() == 0


def test_popular_items_window_is_capped_at_what_is_kept(redis_server):
    store = open_store(redis_server.url + "?window=5")
    store.upsert_items([Item(x, x, _vec(i)) for i, x in enumerate("abc")])
    store.add_events([Event("u", "a", "click", 1.0)] * 3)  # falls out of the 5 kept events
    store.add_events([Event("u", i, "click", 2.0) for i in ("b", "c", "b", "ghost", "c")])
    assert store.popular_items(10, window=100) == [("b", 2.0), ("c", 2.0)]


def test_acknowledged_writes_survive_sigkill(redis_server):
    store = open_store(redis_server.url)
    store.upsert_items([Item("a", "text a", _vec(1), id_index=3)])
    assert store.add_events([Event("u", "a", "click", 1.0, event_id="durable-1")]) == 1
    redis_server.kill()  # right after the acknowledgement: nothing but the fsynced AOF survives
    redis_server.restart()
    fresh = open_store(redis_server.url)
    assert fresh.user_history("u", 10).item_ids == ["a"]
    assert fresh.items_since(0)[1] == 1 and fresh.item_id_indices(["a"]) == {"a": 3}
    assert fresh.add_events([Event("u", "a", "click", 1.0, event_id="durable-1")]) == 0  # retry recognised
    # the old client reconnects by itself (one retry on a broken pooled connection)
    assert store.count_events() == 1 and store.add_events([Event("u", "b", "click", 2.0, event_id="after")]) == 1


def test_redis_down_fails_fast_as_unavailable(redis_server):
    store = open_store(redis_server.url)
    store.add_events([Event("u", "a", "click", 1.0, event_id="before")])
    redis_server.kill()
    calls = [
        lambda: store.add_events([Event("u", "b", "click", 2.0, event_id="x")]),
        lambda: store.add_events([Event("u", "b", "click", 2.0)]),
        lambda: store.upsert_items([Item("a", "t", _vec(1))]),
        lambda: store.user_history("u", 10),
        lambda: store.items_since(0),
        lambda: store.item_id_indices(["a"]),
        lambda: store.popular_items(5, 100),
        store.count_events,
    ]
    for call in calls:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            call()
        assert time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    down = open_store(redis_server.url)  # opening against a down server does not hang or raise
    assert time.monotonic() - t0 < 2.5
    with pytest.raises(StoreUnavailable):
        down.count_events()
    redis_server.restart()
    assert store.count_events() == 1  # nothing half-written, the acknowledged event is there
    assert store.add_events([Event("u", "b", "click", 2.0, event_id="x")]) == 1


def test_a_stalled_redis_times_out_as_unavailable(redis_server):
    store = open_store(redis_server.url + "?timeout=0.3")
    store.count_events()
    blocker = open_store(redis_server.url)
    blocker.db.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # the server stops answering
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.add_events([Event("u", "a", "click", 1.0, event_id="slow")])
    assert time.monotonic() - t0 < 1.0
    time.sleep(1.5)
    assert store.add_events([Event("u", "a", "click", 1.0, event_id="slow")]) in (0, 1)  # at most once


def test_a_read_only_redis_is_unavailable(redis_server):
    store = open_store(redis_server.url)
    store.db.config_set("min-replicas-to-write", 1)  # no replica: writes are refused (NOREPLICAS)
    with pytest.raises(StoreUnavailable):
        store.add_events([Event("u", "a", "click", 1.0)])
    store.db.config_set("min-replicas-to-write", 0)
    assert store.add_events([Event("u", "a", "click", 1.0)]) == 1


def test_copy_state_command_fills_redis_from_a_sqlite_state(tmp_path, redis_server):
    from freshrec.cli import main
    from freshrec.store import Event, Item, open_store

    src = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    v = np.ones(4, np.float32) / 2
    src.upsert_items([Item("a", "A film", v), Item("b", "B film", v, id_index=2)])
    src.add_events([Event("u", "a", "click", 1.0, event_id="e1"), Event("u", "b", "rate", 2.0, 4.0, "e2")])
    src.close()
    url = redis_server.url
    assert main(["copy-state", "--from", f"sqlite:///{tmp_path / 'state.db'}", "--to", url]) == 0
    dst = open_store(url)
    assert dst.count_events() == 2 and dst.item_id_indices(["a", "b"]) == {"a": 0, "b": 2}
    assert dst.user_history("u", 10).item_ids == ["a", "b"]
    assert main(["copy-state", "--from", f"sqlite:///{tmp_path / 'state.db'}", "--to", url]) == 0  # idempotent
    assert dst.count_events() == 2


def test_vector_space_keys(redis_server):
    """Space 1 stays in the item hash's `vector` (empty: missing); a space >= 2 is the field
    `vector:<space>` and a member of cat:spaces until it is dropped; the embedding is a field."""
    store = open_store(redis_server.url)
    v = np.ones(4, np.float32) / 2
    store.upsert_items([Item("a", "text a", v, embedding=v[:3]), Item("b", "text b", v)], space=2)
    assert store.db.hmget("freshrec:{cat}:item:a", ["vector", "vector:2", "embedding"]) == [b"", v.tobytes(), v[:3].tobytes()]
    assert store.db.hget("freshrec:{cat}:item:b", "embedding") == b""
    assert store.db.smembers("freshrec:{cat}:spaces") == {b"2"}
    store.put_vectors(3, ["a", "ghost"], np.stack([v, v]))
    assert not store.db.exists("freshrec:{cat}:item:ghost") and store.db.smembers("freshrec:{cat}:spaces") == {b"2", b"3"}
    store.upsert_items([Item("a", "text a2", v)])  # space 1 again: the other spaces' fields go
    assert store.db.hkeys("freshrec:{cat}:item:a").count(b"vector:2") == 0 and not store.db.hexists("freshrec:{cat}:item:a", "vector:3")
    assert store.vector_spaces() == {1: 1, 2: 1}  # space 3 is empty, though still in cat:spaces
    assert store.drop_vectors(2) == 1 and store.db.smembers("freshrec:{cat}:spaces") == {b"3"}


def test_standalone_ingest_is_one_script_and_stores_what_the_two_steps_store(redis_server):
    """On one server an ingest is one script (the cluster's reservation and write together): the
    same events give the same users' histories, arrival order, popularity window and idempotency
    as the two steps, and the reservation stamp the readers wait on is never written."""
    one, two = (open_store(redis_server.url + f"?prefix={p}:&window=5") for p in ("one", "two"))
    assert one.one_script and not one.cluster
    two.one_script = False
    batches = [
        [Event("a", "i1", "click", 3.0, event_id="e1"), Event("b", "i2", "rate", 1.0, value=4.0, event_id="e2")],
        [Event("a", "i1", "click", 3.0, event_id="e1"), Event("a", "i3", "click", 2.0, event_id="e3")],  # e1: a retry
        [Event("b", "i4", "click", 5.0), Event("b", "i4", "click", 5.0), Event("c", "i2", "click", 6.0, event_id="x")],
        [Event("c", "i5", "like", 7.0, event_id="x"), Event("c", "i6", "click", 8.0, event_id="y"),
         Event("c", "i6", "click", 8.0, event_id="y")],  # fmt: skip
    ]
    for batch in batches:
        assert one.add_events(batch) == two.add_events(batch)
    assert [one.add_events(b) for b in batches] == [0, 0, 2, 0]  # only the id-less events are new again
    for b in batches:
        two.add_events(b)
    for user in ("a", "b", "c"):
        h1, h2 = one.user_history(user, 10), two.user_history(user, 10)
        assert (h1.item_ids, h1.timestamps, h1.event_types, h1.seen) == (h2.item_ids, h2.timestamps, h2.event_types, h2.seen)
    assert [(s, e.user_id, e.item_id, e.event_id) for s, e in one.numbered_events()] == [
        (s, e.user_id, e.item_id, e.event_id) for s, e in two.numbered_events()
    ]
    assert [s for s, _ in one.numbered_events()] == list(range(1, 10))
    assert one.popular_items(5, 5) == two.popular_items(5, 5)
    assert not one.db.exists("one:{g}:reserved") and two.db.exists("two:{g}:reserved")
    t0 = time.monotonic()
    assert one.last_arrival() == 9
    assert time.monotonic() - t0 < 0.5  # no lease to wait out (the two steps wait it after each write)

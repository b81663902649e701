"""Redis state store on a real redis-server: the SQLite store's contract (idempotency, history
order, catalog versions, concurrent writers), durability across SIGKILL, fast UNAVAILABLE."""

from __future__ import annotations

import multiprocessing as mp
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
    assert store.db.exists("t1:ev:seq") and not store.db.exists("freshrec:ev:seq")
    other = open_store(redis_server.url)  # default prefix: a separate namespace
    assert other.prefix == "freshrec:" and other.count_events() == 0


def test_events_are_idempotent_by_event_id(redis_server):
    store = open_store(redis_server.url)
    e = [Event("u", "i1", "click", 10.0, event_id="a"), Event("u", "i2", "click", 11.0, event_id="b")]
    assert store.add_events(e) == 2
    assert store.add_events(e) == 0
    assert store.add_events([e[0], Event("u", "i9", "click", 12.0, event_id="c")]) == 1
    assert store.add_events([Event("u", "i3", "click", 12.0)] * 2) == 2  # no id: each is new
    assert store.count_events() == 5
    assert store.add_events([]) == 0


def test_user_history_is_latest_first_limited_and_time_ordered(redis_server):
    store = open_store(redis_server.url)
    store.add_events([Event("u", f"i{t}", "rate", float(t), value=float(t % 5)) for t in (5, 1, 3, 2, 4)])
    store.add_events([Event("other", "x", "click", 9.0)])
    h = store.user_history("u", limit=3)
    assert h.item_ids == ["i3", "i4", "i5"]
    assert h.timestamps == [3.0, 4.0, 5.0]
    assert h.values == [3.0, 4.0, 0.0] and h.event_types == ["rate"] * 3
    assert h.seen == {"i1", "i2", "i3", "i4", "i5"}
    assert store.user_history("nobody", 3).item_ids == []
    # equal timestamps keep arrival order; missing values come back as NaN; odd ids are fine
    store.add_events([Event("v:{x}|", "é/1", "click", 7.0), Event("v:{x}|", "b|2", "like", 7.0, value=1.5)])
    h = store.user_history("v:{x}|", 10)
    assert h.item_ids == ["é/1", "b|2"] and np.isnan(h.values[0]) and h.values[1] == 1.5
    h0 = store.user_history("u", 0)
    assert h0.item_ids == [] and h0.seen == {"i1", "i2", "i3", "i4", "i5"}


def test_items_since_sees_inserts_and_updates_in_version_order(redis_server):
    store = open_store(redis_server.url)
    assert store.items_since(0) == ([], 0)
    store.upsert_items([Item("a", "text a", _vec(1)), Item("b", "text b", _vec(2), metadata='{"y": 1}', id_index=7)])
    items, v1 = store.items_since(0)
    assert [i.item_id for i in items] == ["a", "b"] and v1 == 1
    assert items[1].metadata == '{"y": 1}' and items[1].vector.dtype == np.float32
    store.upsert_items([Item("a", "text a2", _vec(3))])
    items, v2 = store.items_since(v1)
    assert [(i.item_id, i.text) for i in items] == [("a", "text a2")] and v2 == 2
    np.testing.assert_array_equal(items[0].vector, _vec(3))
    assert store.items_since(v2) == ([], v2)
    assert store.item_id_indices(["a", "b", "zz"]) == {"a": 0, "b": 7}
    # another replica (its own connection) sees the same catalog
    items, v = open_store(redis_server.url).items_since(0)
    assert sorted(i.item_id for i in items) == ["a", "b"] and v == 2


def test_popular_items_over_the_latest_window_of_known_items(redis_server):
    store = open_store(redis_server.url + "?window=5")
    store.upsert_items([Item(x, x, _vec(i)) for i, x in enumerate("abc")])
    store.add_events([Event("u", "a", "click", 1.0)] * 3)  # falls out of the 5-event window
    store.add_events([Event("u", i, "click", 2.0) for i in ("b", "c", "b", "ghost", "c")])
    assert store.popular_items(10, window=5) == [("b", 2.0), ("c", 2.0)]  # ties by id; ghost unknown
    assert store.popular_items(1, window=2) == [("c", 1.0)]
    assert store.popular_items(10, window=100) == [("b", 2.0), ("c", 2.0)]  # capped at the kept window


def _writer(url: str, start: int, n: int) -> None:
    store = open_store(url)
    for i in range(start, start + n):
        store.add_events([Event(f"u{i % 3}", f"i{i}", "click", float(i), event_id=f"e{i}")])
        if i % 10 == 0:  # the same event from two replicas: stored once
            store.add_events([Event("race", "r", "click", 1.0, event_id=f"race{i % 50}")])
    store.close()


def test_concurrent_writers_in_processes_lose_nothing(redis_server):
    url = redis_server.url
    procs = [mp.get_context("spawn").Process(target=_writer, args=(url, k * 100, 100)) for k in range(3)]
    for p in procs:
        p.start()
    reader = open_store(url)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert reader.count_events() == 300 + 5  # every write of another process is visible at once
    assert sum(len(reader.user_history(f"u{j}", 1000).item_ids) for j in range(3)) == 300
    assert len(reader.user_history("race", 100).item_ids) == 5


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

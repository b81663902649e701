"""Redis Cluster behaviour of the state store on real redis-servers (3 primaries + 3 replicas):
the key layout's slots, the idempotency window, a primary killed under ingest (the shared contract
runs on the cluster in test_store_contract.py)."""

from __future__ import annotations

import re
import threading
import time

import pytest
from redis.crc import key_slot

from freshrec.store import Event, StoreUnavailable, open_store
from freshrec.store.redis_store import RedisStore


def test_every_write_is_single_slot(redis_cluster_url):
    store = open_store(redis_cluster_url)
    assert isinstance(store, RedisStore) and store.cluster
    p = store.prefix
    for user in ("alice", "v:{x}|", "}{"):
        assert len({key_slot(k.encode()) for k in store._user_keys(user)}) == 1
    assert len({key_slot(k.encode()) for k in (store.k_seq, store.k_reserved, store.k_recent, store.k_layout)}) == 1
    catalog = (store.k_version, store.k_cat, store.k_idx, store.k_spaces, store._item_key("a"), store._item_key("{b}"))
    assert len({key_slot(k.encode()) for k in catalog}) == 1
    assert store._item_key("a") == p + "{cat}:item:a" and store._user_keys("alice")[0] == p + "{u:alice}:ev"


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_event_ids_are_remembered_for_the_idempotency_window(backend, request):
    url = request.getfixturevalue("redis_server").url if backend == "redis" else request.getfixturevalue("redis_cluster_url")
    store = open_store(url + ("&" if "?" in url else "?") + "event_id_ttl=1")
    e = Event("u", "a", "click", 1.0, event_id="retry-me")
    assert store.add_events([e]) == 1
    assert store.add_events([e]) == 0  # a retry within the window: stored once
    ids_key = store._user_keys("u")[2]
    assert 0 < store._node(ids_key).pttl(ids_key) <= 1000  # the key set itself expires with its newest id
    time.sleep(1.2)
    assert store.add_events([e]) == 1  # past the window the id is forgotten: the same id is a new event
    assert store.count_events() == 2


def test_a_legacy_layout_is_refused_at_open(redis_server):
    import redis

    redis.Redis.from_url(redis_server.url).set("old:ev:seq", 5)
    with pytest.raises(RuntimeError, match="copy-state"):
        open_store(redis_server.url + "?prefix=old:")


def _ingest(store: RedisStore, users: list[str], stop: threading.Event, log: list) -> None:
    """Sequential single-event writes with ids, each retried until acknowledged, as a client does;
    log: (event, start, end, ok)."""
    k = 0
    while not stop.is_set():
        user = users[k % len(users)]
        e = Event(user, f"i{k}", "click", float(k), event_id=f"e{k}")
        while True:
            t0 = time.monotonic()
            try:
                store.add_events([e])
            except StoreUnavailable:
                log.append((e, t0, time.monotonic(), False))
                if stop.is_set():
                    break
                time.sleep(0.05)
                continue
            log.append((e, t0, time.monotonic(), True))
            break
        k += 1


def test_a_primary_killed_under_ingest_loses_no_acknowledged_event(private_redis_cluster):
    cluster = private_redis_cluster
    store = open_store(cluster.url + "?lease=0.5")
    assert isinstance(store, RedisStore)
    victim = int(store._name(store._node(store.k_seq)).rsplit(":", 1)[1])  # the global slot's primary: every ingest needs it
    users = [f"user{j}" for j in range(30)]  # over every shard
    log: list = []
    stop = threading.Event()
    writer = threading.Thread(target=_ingest, args=(store, users, stop, log), daemon=True)
    writer.start()
    # Its replica, from the replication link (the fixture waited for it to be online); `cluster
    # nodes` may still list a just-joined replica as a master while the gossip catches up.
    replica = int(re.search(r"slave\d+:ip=[^,]+,port=(\d+),state=online", cluster.cli(victim, "info", "replication")).group(1))
    time.sleep(1.0)
    t_kill = time.monotonic()
    cluster.kill(victim)
    # the replica is promoted once the others agree the primary failed (cluster-node-timeout 1 s)
    last_without = time.monotonic()
    while "role:master" not in cluster.cli(replica, "info", "replication"):
        last_without = time.monotonic()  # the global slot has no primary at least until here
        assert last_without - t_kill < 30, cluster.cli(replica, "cluster", "nodes")
        time.sleep(0.05)
    time.sleep(2.0)  # traffic after the failover
    stop.set()
    writer.join(30)
    assert not writer.is_alive()

    acked = [(e, t0, t1) for e, t0, t1, ok in log if ok]
    refused = [(e, t0, t1) for e, t0, t1, ok in log if not ok]
    assert refused, "the outage was not seen"
    assert any(t0 > last_without for _, t0, _ in acked), "no write succeeded after the failover"
    assert any(t1 < t_kill for _, _, t1 in acked)
    # nothing was acknowledged while the global slot had no primary
    assert not [e for e, t0, t1 in acked if t0 > t_kill and t1 < last_without], "acknowledged while the slot had no primary"
    # every acknowledged event is there, once, and the arrival numbers stayed unique
    fresh = open_store(cluster.url)
    stored = {e.event_id for e in fresh.events()}
    assert {e.event_id for e, _, _ in acked} <= stored
    assert fresh.count_events() == len(stored)
    numbers = [n for n, _ in fresh.numbered_events()]
    assert len(numbers) == len(set(numbers)) == len(stored)


def test_copy_state_fills_a_cluster_from_a_standalone_redis(redis_server, redis_cluster_url):
    import numpy as np

    from freshrec.cli import main
    from freshrec.store import Item

    src = open_store(redis_server.url)
    v = np.ones(4, np.float32) / 2
    src.upsert_items([Item("a", "A film", v), Item("b", "B film", v, id_index=2)])
    src.put_vectors(2, ["a"], v[None])
    src.add_events([Event("u", "a", "click", 1.0, event_id="e1"), Event("w", "b", "rate", 2.0, 4.0, "e2"), Event("u", "b", "click", 3.0)])
    assert main(["copy-state", redis_server.url, redis_cluster_url]) == 0
    dst = open_store(redis_cluster_url)
    assert dst.count_events() == 3 and dst.user_ids() == ["u", "w"] and dst.item_id_indices(["a", "b"]) == {"a": 0, "b": 2}
    assert dst.vector_spaces() == {1: 2, 2: 1} and dst.user_history("u", 10).item_ids == ["a", "b"]
    assert main(["copy-state", "--from", redis_server.url, "--to", redis_cluster_url]) == 0  # idempotent for events with ids
    assert dst.count_events() == 4  # the event without an id is copied again: ids make copies idempotent

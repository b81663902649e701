"""The state-store contract, run against every backend: SQLite (a file), Redis (a real
redis-server) and Redis Cluster (3 primaries + 3 replicas of a real redis-server). Backend-specific behaviour (WAL, locking, URL options, SIGKILL, outages) is tested
in test_store.py and test_store_redis.py."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

from freshrec.store import Event, Item, StoreUnavailable, copy_state, open_store


def _vec(seed: int, dim: int = 4) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    if request.param == "redis-cluster":
        return request.getfixturevalue("redis_cluster_url")
    return request.getfixturevalue("redis_server").url


def test_events_are_idempotent_by_event_id(store_url):
    store = open_store(store_url)
    e = [Event("u", "i1", "click", 10.0, event_id="a"), Event("u", "i2", "click", 11.0, event_id="b")]
    assert store.add_events(e) == 2
    assert store.add_events(e) == 0
    assert store.add_events([e[0], Event("u", "i9", "click", 12.0, event_id="c")]) == 1
    assert store.add_events([Event("u", "i3", "click", 12.0)] * 2) == 2  # no id: each is new
    assert store.count_events() == 5
    assert store.add_events([]) == 0


def test_user_history_is_latest_first_limited_and_time_ordered(store_url):
    store = open_store(store_url)
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


def test_items_since_sees_inserts_and_updates_in_version_order(store_url):
    store = open_store(store_url)
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
    items, v = open_store(store_url).items_since(0)
    assert sorted(i.item_id for i in items) == ["a", "b"] and v == 2


def test_item_vectors_since_is_items_since_without_texts(store_url):
    """The index's refresh read: the same ids, order, vectors and version as items_since, as one
    writable (N, D) float32 block."""
    store = open_store(store_url)
    ids, vectors, v0 = store.item_vectors_since(0)
    assert ids == [] and len(vectors) == 0 and v0 == 0
    store.upsert_items([Item(x, f"text {x}", _vec(i)) for i, x in enumerate("abc")])
    store.upsert_items([Item("b", "text b2", _vec(9))])
    for since in (0, 1):
        items, v = store.items_since(since)
        ids, vectors, v2 = store.item_vectors_since(since)
        assert ids == [i.item_id for i in items] and v2 == v == 2
        assert vectors.dtype == np.float32 and vectors.shape == (len(items), len(_vec(0))) and vectors.flags.writeable
        np.testing.assert_array_equal(vectors, np.stack([i.vector for i in items]))
    assert store.item_vectors_since(2)[0] == [] and store.item_vectors_since(2)[2] == 2


def test_catalog_since_brings_content_vectors_beside_the_vectors(store_url):
    """The pipeline's refresh read: ids, vectors and content vectors of one snapshot, a zero
    content row for an item stored without one; items_since carries the content as written."""
    store = open_store(store_url)
    block = store.catalog_since(0)
    assert block.item_ids == [] and block.version == 0
    store.upsert_items([Item("a", "text a", _vec(0), content=_vec(5, 3)), Item("b", "text b", _vec(1))])
    store.upsert_items([Item("c", "text c", _vec(2), content=_vec(6, 3))])
    block = store.catalog_since(0)
    assert block.item_ids == ["a", "b", "c"] and block.version == 2
    np.testing.assert_array_equal(block.vectors, np.stack([_vec(0), _vec(1), _vec(2)]))
    np.testing.assert_array_equal(block.contents, np.stack([_vec(5, 3), np.zeros(3, np.float32), _vec(6, 3)]))
    later = store.catalog_since(1)
    assert later.item_ids == ["c"] and later.contents.shape == (1, 3)
    items = {i.item_id: i for i in store.items_since(0)[0]}
    assert items["b"].content is None
    np.testing.assert_array_equal(items["a"].content, _vec(5, 3))


def test_topic_mixtures_round_trip_beside_the_vectors_and_texts_are_read_by_id(store_url):
    """An item's topic mixture is stored with it: catalog_since brings the mixtures in the rows of
    the vectors (a zero row for an item without one), items_since carries them as written, an
    upsert replaces them; item_texts reads the texts of known items only."""
    store = open_store(store_url)
    mix = np.array([0.7, 0.2, 0.1], np.float32)
    store.upsert_items([Item("a", "text a", _vec(0), topics=mix), Item("b", "text b", _vec(1))])
    block = store.catalog_since(0)
    np.testing.assert_array_equal(block.topics, np.stack([mix, np.zeros(3, np.float32)]))
    items = {i.item_id: i for i in store.items_since(0)[0]}
    assert items["b"].topics is None
    np.testing.assert_array_equal(items["a"].topics, mix)
    store.upsert_items([Item("b", "text b2", _vec(1), topics=mix[::-1].copy())])
    later = store.catalog_since(block.version)
    assert later.item_ids == ["b"]
    np.testing.assert_array_equal(later.topics, mix[::-1][None])
    assert store.item_texts(["b", "nope", "a"]) == {"a": "text a", "b": "text b2"}


def test_popular_items_over_the_latest_window_of_known_items(store_url):
    store = open_store(store_url)
    store.upsert_items([Item(x, x, _vec(i)) for i, x in enumerate("abc")])
    store.add_events([Event("u", "a", "click", 1.0)] * 3)  # falls out of the 5-event window
    store.add_events([Event("u", i, "click", 2.0) for i in ("b", "c", "b", "ghost", "c")])
    assert store.popular_items(10, window=5) == [("b", 2.0), ("c", 2.0)]  # ties by id; ghost unknown
    assert store.popular_items(1, window=2) == [("c", 1.0)]


def _add(store, events: list[Event]) -> None:
    """As a client does: a retriable refusal (a Redis replica slow to confirm) is sent again; the
    event ids make the retry safe."""
    for attempt in range(20):
        try:
            store.add_events(events)
            return
        except StoreUnavailable:
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError(f"still refused after 20 tries: {events}")


def _writer(url: str, start: int, n: int) -> None:
    store = open_store(url)
    for i in range(start, start + n):
        _add(store, [Event(f"u{i % 3}", f"i{i}", "click", float(i), event_id=f"e{i}")])
        if i % 10 == 0:  # the same event from two replicas: stored once
            _add(store, [Event("race", "r", "click", 1.0, event_id=f"race{i % 50}")])
    store.close()


def test_concurrent_writers_in_processes_lose_nothing(store_url):
    url = store_url
    reader = open_store(url)  # creates the store before the writers start
    procs = [mp.get_context("spawn").Process(target=_writer, args=(url, k * 100, 100)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert reader.count_events() == 300 + 5  # every write of another process is visible at once
    assert sum(len(reader.user_history(f"u{j}", 1000).item_ids) for j in range(3)) == 300
    assert len(reader.user_history("race", 100).item_ids) == 5


def test_tool_reads_events_users_and_counts(store_url):
    """What tools read instead of going around the store: every event in arrival order with its
    id, users in order of first arrival, the item count."""
    store = open_store(store_url)
    assert list(store.events()) == [] and store.user_ids() == [] and store.count_items() == 0
    written = [Event("b", "i1", "rate", 5.0, value=4.0, event_id="e1"), Event("a", "i2", "click", 1.0),
               Event("b", "i3", "like", 2.0, event_id="e3"), Event("c:{x}", "é", "click", 9.0, event_id="e4")]  # fmt: skip
    for e in written:
        store.add_events([e])
    got = list(store.events())
    assert [(e.user_id, e.item_id, e.event_type, e.timestamp, e.event_id) for e in got] == [
        (e.user_id, e.item_id, e.event_type, e.timestamp, e.event_id) for e in written
    ]
    assert got[0].value == 4.0 and np.isnan(got[1].value)
    assert store.user_ids() == ["b", "a", "c:{x}"]  # first arrival, not time or name
    store.upsert_items([Item("x", "x", _vec(1)), Item("y", "y", _vec(2))])
    assert store.count_items() == 2


def test_forget_user_removes_events_seen_items_and_popularity_share(store_url):
    store = open_store(store_url)
    store.upsert_items([Item(x, x, _vec(i)) for i, x in enumerate("abc")])
    store.add_events([Event("gone:{u}|", "a", "click", 1.0, event_id="g1"), Event("stay", "b", "click", 2.0, event_id="s1"),
                      Event("gone:{u}|", "a", "like", 3.0, event_id="g2"), Event("gone:{u}|", "c", "rate", 4.0, value=5.0),
                      Event("stay", "c", "click", 5.0)])  # fmt: skip
    last = store.last_arrival()
    assert store.popular_items(10, window=100) == [("a", 2.0), ("c", 2.0), ("b", 1.0)]
    assert store.forget_user("gone:{u}|") == 3
    h = store.user_history("gone:{u}|", 10)
    assert h.item_ids == [] and h.seen == set()
    assert store.user_ids() == ["stay"] and store.count_events() == 2
    assert [(e.user_id, e.item_id) for e in store.events()] == [("stay", "b"), ("stay", "c")]
    assert store.popular_items(10, window=100) == [("b", 1.0), ("c", 1.0)]  # the user's share of the counts is gone
    assert store.user_history("stay", 10).item_ids == ["b", "c"]  # nobody else's data moves
    # idempotent: a repeat (or an unknown user) removes nothing
    assert store.forget_user("gone:{u}|") == 0 and store.forget_user("never-seen") == 0
    assert store.count_events() == 2
    # a retry of an event acknowledged before the removal stays a duplicate: the user is not back
    assert store.add_events([Event("gone:{u}|", "a", "click", 1.0, event_id="g1")]) == 0
    assert store.user_history("gone:{u}|", 10).item_ids == [] and store.user_ids() == ["stay"]
    # a new event (new id, or none) is a new user's first: arrival numbers go on past the removed ones
    assert store.add_events([Event("gone:{u}|", "b", "click", 9.0, event_id="g9"), Event("gone:{u}|", "c", "click", 9.5)]) == 2
    assert store.user_history("gone:{u}|", 10).item_ids == ["b", "c"] and store.user_ids() == ["stay", "gone:{u}|"]
    numbers = [n for n, _ in store.numbered_events()]
    assert numbers == sorted(numbers) and numbers[-2:] == [last + 1, last + 2] and store.last_arrival() == last + 2
    assert store.count_events() == 4
    # durable: another connection sees the removal
    assert open_store(store_url).user_history("gone:{u}|", 10).item_ids == ["b", "c"]


def test_numbered_events_keep_arrival_numbers_across_ignored_retries(store_url):
    store = open_store(store_url)
    assert store.last_arrival() == 0 and list(store.numbered_events()) == []
    store.add_events([Event("u", "a", "click", 1.0, event_id="x"), Event("u", "a", "click", 1.0, event_id="x"),
                      Event("v", "b", "click", 2.0)])  # fmt: skip
    numbered = list(store.numbered_events())
    assert [e for _, e in numbered] == list(store.events())
    assert [n for n, _ in numbered] == sorted({n for n, _ in numbered}) and numbered[-1][0] == store.last_arrival()


def test_load_items_writes_every_batch(store_url):
    store = open_store(store_url)
    batches = ([Item(f"i{b}-{j}", f"text {b} {j}", _vec(10 * b + j)) for j in range(3)] for b in range(4))
    assert store.load_items(batches) == 12
    items, _ = open_store(store_url).items_since(0)  # another connection sees the whole load
    assert len(items) == store.count_items() == 12
    np.testing.assert_array_equal(next(i for i in items if i.item_id == "i2-1").vector, _vec(21))


def test_copy_state_copies_items_and_events_once(store_url, tmp_path):
    """copy_state between any two backends (here: a SQLite file into this store): items with
    their vectors and id rows, events in arrival order with their ids, so a second copy adds
    nothing."""
    src = open_store(f"sqlite:///{tmp_path / 'source.db'}")
    src.upsert_items([Item("a", "text a", _vec(1), metadata='{"g": 1}', id_index=3), Item("b", "text b", _vec(2))])
    src.add_events([Event("u", "a", "rate", 1.0, value=5.0, event_id="x1"), Event("v", "b", "click", 2.0, event_id="x2")])
    dst = open_store(store_url)
    assert copy_state(src, dst) == (2, 2)
    assert copy_state(src, dst) == (2, 0)  # items rewritten as they are, events recognised
    items = {i.item_id: i for i in dst.items_since(0)[0]}
    assert items["a"].metadata == '{"g": 1}' and items["a"].id_index == 3
    np.testing.assert_array_equal(items["b"].vector, _vec(2))
    copied = list(dst.events())
    assert [(e.user_id, e.item_id, e.event_type, e.event_id) for e in copied] == [("u", "a", "rate", "x1"), ("v", "b", "click", "x2")]
    assert copied[0].value == 5.0 and np.isnan(copied[1].value)
    assert dst.user_history("u", 10).item_ids == ["a"] and dst.popular_items(5, 10) == src.popular_items(5, 10)


def test_item_embeddings_round_trip_and_feed_item_inputs(store_url):
    """An item's text embedding is stored with it (None: none); item_inputs gives an item tower
    the id rows and embeddings of any ids, zero rows for items without one and unknown items."""
    store = open_store(store_url)
    store.upsert_items([Item("a", "text a", _vec(0), id_index=4, embedding=_vec(7, 6)), Item("b", "text b", _vec(1))])
    items = {i.item_id: i for i in open_store(store_url).items_since(0)[0]}
    np.testing.assert_array_equal(items["a"].embedding, _vec(7, 6))
    assert items["a"].embedding.dtype == np.float32 and items["b"].embedding is None
    ids, embeddings = store.item_inputs(["b", "zz", "a"])
    assert ids.dtype == np.int64 and ids.tolist() == [0, 0, 4]
    assert embeddings.dtype == np.float32
    np.testing.assert_array_equal(embeddings, np.stack([np.zeros(6, np.float32), np.zeros(6, np.float32), _vec(7, 6)]))
    ids, embeddings = store.item_inputs(["b"])
    assert ids.tolist() == [0] and embeddings.shape == (1, 0)  # no dimension known
    ids, embeddings = store.item_inputs([])
    assert ids.shape == (0,) and len(embeddings) == 0


def test_upsert_into_a_space_removes_the_vectors_of_every_other_space(store_url):
    """Vectors computed from an item's previous text go when it is written: into space 2, its
    space-1 vector becomes empty (missing) and its space-3 vector goes; other items keep theirs."""
    store = open_store(store_url)
    store.upsert_items([Item("a", "text a", _vec(0)), Item("b", "text b", _vec(1))])
    store.put_vectors(2, ["a", "b"], np.stack([_vec(10), _vec(11)]))
    store.put_vectors(3, ["a", "b"], np.stack([_vec(20), _vec(21)]))
    store.upsert_items([Item("a", "text a2", _vec(12))], space=2)
    assert store.catalog_since(1).item_ids == ["a"] and store.catalog_since(1).version == 2
    items = {i.item_id: i for i in store.items_since(0)[0]}
    assert items["a"].text == "text a2" and items["a"].vector.shape == (0,) and items["a"].vector.dtype == np.float32
    np.testing.assert_array_equal(items["b"].vector, _vec(1))
    assert store.catalog_since(0).missing.tolist() == [False, True]  # catalog order: b, then a
    for space, b, a in ((2, _vec(11), _vec(12)), (3, _vec(21), None)):
        block = store.catalog_since(0, space)
        assert block.item_ids == ["b", "a"] and block.missing.tolist() == [False, a is None]
        np.testing.assert_array_equal(block.vectors, np.stack([b, np.zeros(4, np.float32) if a is None else a]))
    assert store.vector_spaces() == {1: 1, 2: 2, 3: 1}
    store.upsert_items([Item("a", "text a3", _vec(30))])  # back into space 1: space 2 loses a
    assert store.vector_spaces() == {1: 2, 2: 1, 3: 1}
    np.testing.assert_array_equal(store.catalog_since(0, 1).vectors, np.stack([_vec(1), _vec(30)]))


def test_put_vectors_keeps_the_catalog_version_and_skips_unknown_items(store_url):
    """The update tool fills a space before its model version is loaded: no catalog version moves
    (no index refresh is triggered), no other field changes, unknown ids are not created."""
    store = open_store(store_url)
    n = 1500  # more than one internal batch
    ids = [f"i{j:04d}" for j in range(n)] + ["ghost"]  # one version: Redis orders its items by id
    store.load_items([[Item(ids[j], f"text {j}", _vec(j), id_index=j, embedding=_vec(j, 3)) for j in range(n)]])
    version = store.catalog_since(0).version
    vectors = np.stack([_vec(10_000 + j, 8) for j in range(n + 1)])
    assert store.put_vectors(2, ids, vectors) == n
    assert store.put_vectors(2, ids[:2], vectors[:2]) == 2  # rewriting is fine
    assert store.catalog_since(version).item_ids == [] and store.catalog_since(0).version == version
    assert store.count_items() == n and store.item_id_indices(["ghost"]) == {}
    block = open_store(store_url).catalog_since(0, 2)
    assert not block.missing.any() and block.item_ids == ids[:n]
    np.testing.assert_array_equal(block.vectors, vectors[:n])
    assert store.put_vectors(1, ["i0005", "ghost"], np.stack([_vec(99), _vec(98)])) == 1  # space 1 too
    items = {i.item_id: i for i in store.items_since(0)[0]}
    np.testing.assert_array_equal(items["i0005"].vector, _vec(99))
    assert items["i0005"].id_index == 5 and items["i0005"].text == "text 5"
    np.testing.assert_array_equal(items["i0005"].embedding, _vec(5, 3))
    assert store.catalog_since(0).version == version and store.put_vectors(3, [], np.zeros((0, 8), np.float32)) == 0
    with pytest.raises(ValueError):
        store.put_vectors(2, ids[:2], vectors[:1])
    with pytest.raises(ValueError):
        store.put_vectors(0, ids[:1], vectors[:1])


def test_catalog_since_reads_a_space_with_missing_rows_in_catalog_order(store_url):
    """A space's block: the vectors of that space in catalog order, zero rows marked missing; the
    same vectors through item_vectors_since and items_since; an empty vector array stores none."""
    store = open_store(store_url)
    store.upsert_items([Item("a", "text a", _vec(0)), Item("b", "text b", _vec(1))])
    store.upsert_items([Item("c", "text c", _vec(2), content=_vec(6, 3))])
    store.upsert_items([Item("d", "text d", np.zeros(0, np.float32))])  # no space-1 vector
    store.put_vectors(2, ["c", "a"], np.stack([_vec(12), _vec(10)]))
    block = store.catalog_since(0, space=2)
    assert block.item_ids == ["a", "b", "c", "d"] and block.version == 3
    assert block.missing.dtype == bool and block.missing.tolist() == [False, True, False, True]
    zero = np.zeros(4, np.float32)
    np.testing.assert_array_equal(block.vectors, np.stack([_vec(10), zero, _vec(12), zero]))
    np.testing.assert_array_equal(block.contents, np.stack([np.zeros(3, np.float32)] * 2 + [_vec(6, 3), np.zeros(3, np.float32)]))
    later = store.catalog_since(1, 2)
    assert later.item_ids == ["c", "d"] and later.missing.tolist() == [False, True]
    np.testing.assert_array_equal(later.vectors[0], _vec(12))
    ids, vectors, v = store.item_vectors_since(0, 2)
    assert ids == block.item_ids and v == 3
    np.testing.assert_array_equal(vectors, block.vectors)
    items = store.items_since(0, space=2)[0]
    assert [i.vector.shape for i in items] == [(4,), (0,), (4,), (0,)]
    np.testing.assert_array_equal(items[2].vector, _vec(12))
    one = store.catalog_since(0)  # space 1: d is missing
    assert one.missing.tolist() == [False, False, False, True]
    np.testing.assert_array_equal(one.vectors, np.stack([_vec(0), _vec(1), _vec(2), zero]))
    none = store.catalog_since(0, 5)  # a space without vectors
    assert none.missing.all() and none.vectors.shape[0] == 4 and not none.vectors.any()
    assert store.catalog_since(3, 2).item_ids == [] and store.catalog_since(3, 2).missing.shape == (0,)


def test_drop_vectors_and_vector_spaces(store_url):
    store = open_store(store_url)
    assert store.vector_spaces() == {}
    store.upsert_items([Item(x, x, _vec(i)) for i, x in enumerate("abc")])
    store.put_vectors(2, ["a", "b"], np.stack([_vec(10), _vec(11)]))
    store.put_vectors(4, ["c"], np.stack([_vec(12)]))
    assert store.vector_spaces() == {1: 3, 2: 2, 4: 1}
    assert store.drop_vectors(2) == 2 and store.drop_vectors(2) == 0
    assert open_store(store_url).vector_spaces() == {1: 3, 4: 1}
    assert store.catalog_since(0, 2).missing.all()
    with pytest.raises(ValueError):
        store.drop_vectors(1)
    with pytest.raises(ValueError):
        store.catalog_since(0, 0)
    assert store.vector_spaces() == {1: 3, 4: 1}


def test_assign_id_rows_sets_learned_rows_of_existing_items(store_url):
    store = open_store(store_url)
    store.upsert_items([Item("a", "text a", _vec(0), id_index=2, embedding=_vec(5, 3)), Item("b", "text b", _vec(1))])
    version = store.catalog_since(0).version
    assert store.assign_id_rows({"b": 9, "ghost": 4}) == 1
    assert store.assign_id_rows({}) == 0
    assert store.catalog_since(0).version == version  # no catalog write
    fresh = open_store(store_url)
    assert fresh.item_id_indices(["a", "b", "ghost"]) == {"a": 2, "b": 9}
    assert fresh.item_inputs(["b", "ghost", "a"])[0].tolist() == [9, 0, 2]
    items = {i.item_id: i for i in fresh.items_since(0)[0]}
    assert items["b"].id_index == 9
    np.testing.assert_array_equal(items["b"].vector, _vec(1))


def test_copy_state_copies_every_vector_space_and_embeddings(store_url, tmp_path):
    """Items without a space-1 vector are copied too; each space >= 2 arrives as it was."""
    src = open_store(f"sqlite:///{tmp_path / 'source.db'}")
    src.upsert_items([Item("a", "text a", _vec(1), embedding=_vec(5, 3)), Item("b", "text b", _vec(2))])
    src.upsert_items([Item("c", "text c", _vec(3), id_index=6)], space=2)  # no space-1 vector
    src.put_vectors(2, ["a"], np.stack([_vec(11)]))
    src.put_vectors(3, ["b", "c"], np.stack([_vec(21), _vec(22)]))
    dst = open_store(store_url)
    assert copy_state(src, dst) == (3, 0)
    assert copy_state(src, dst) == (3, 0)  # again: the same state
    assert dst.vector_spaces() == src.vector_spaces() == {1: 2, 2: 2, 3: 2}
    for space in (1, 2, 3):
        a, b = src.catalog_since(0, space), dst.catalog_since(0, space)
        assert a.item_ids == b.item_ids and a.missing.tolist() == b.missing.tolist()
        np.testing.assert_array_equal(a.vectors, b.vectors)
    items = {i.item_id: i for i in dst.items_since(0)[0]}
    np.testing.assert_array_equal(items["a"].embedding, _vec(5, 3))
    assert items["b"].embedding is None and items["c"].id_index == 6

"""`forget_user` against a real tritonserver on both stores: every event of the user goes, durably
before the answer (SIGKILL of the server right after it), the next recommend is a new user's, a
repeat removes nothing, a retried old event does not bring the user back, and the key guards it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from freshrec.store import copy_state, open_store
from tests.triton_calls import _input, ingest, recommend, users_of

KEY = "forgetkey0123456789"
NEW_USER = "forget-test-never-seen"


def forget(client, user: str, key: str | None = KEY) -> int:
    inputs = [_input("user_id", [user], "BYTES")] + ([_input("key", [key], "BYTES")] if key is not None else [])
    return int(client.infer("forget_user", inputs).as_numpy("removed")[0])


def _refused(fn) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        fn()
    return info.value


def _forget_and_check(client, store_url: str, user: str, timings: list[float]) -> int:
    """Forgets a user with a history (plus one event with an id sent now) on a live server and
    checks the answers; returns how many events went."""
    store = open_store(store_url)
    try:
        before = recommend(client, user, k=10)[0]
        # a known user gets a personal list (no cold-start call yet: each recommend instance caches
        # the popularity counts for 10 s, and they must be read after the removal below)
        assert before != [i for i, _ in store.popular_items(10, 10000)]
        assert ingest(client, [user], [before[0]], [time.time()], event_ids=["forget-e1"]) == 1
        n = len(store.user_history(user, 10_000).item_ids)
        assert n > 1
        t0 = time.perf_counter()
        assert forget(client, user) == n
        timings.append((time.perf_counter() - t0) * 1e3)
        # the next recommend on any instance is a new user's (cold start, nothing excluded)
        for _ in range(3):  # more than one recommend instance
            assert recommend(client, user, k=10)[0] == recommend(client, NEW_USER, k=10)[0]
        assert store.user_history(user, 10_000).item_ids == [] and user not in store.user_ids()
        # idempotent, and a retry of an event acknowledged before the removal stays a duplicate
        t0 = time.perf_counter()
        assert forget(client, user) == 0
        timings.append((time.perf_counter() - t0) * 1e3)
        assert ingest(client, [user], [before[0]], [time.time()], event_ids=["forget-e1"]) == 0
        assert store.user_history(user, 10).item_ids == []
    finally:
        store.close()
    # the key guards it: wrong, empty or missing key, and bad user ids, are INVALID_ARGUMENT
    other = users_of_store(store_url)[0]
    for bad in (lambda: forget(client, other, "wrong"), lambda: forget(client, other, ""), lambda: forget(client, other, None),
                lambda: forget(client, "", KEY)):  # fmt: skip
        exc = _refused(bad)
        assert exc.status() == "StatusCode.INVALID_ARGUMENT", exc
        assert KEY not in exc.message()
    assert "forget key" in _refused(lambda: forget(client, other, "wrong")).message()
    return n


def users_of_store(url: str) -> list[str]:
    store = open_store(url)
    try:
        return store.user_ids()
    finally:
        store.close()


def _after_restart(client, store_url: str, user: str, sent_id: bool = True) -> None:
    store = open_store(store_url)
    try:
        assert store.user_history(user, 10_000).item_ids == [] and user not in store.user_ids()
    finally:
        store.close()
    assert recommend(client, user, k=10)[0] == recommend(client, NEW_USER, k=10)[0]
    if sent_id:  # event ids are the user's own: only the user who sent it retries it
        assert ingest(client, [user], ["1"], [time.time()], event_ids=["forget-e1"]) == 0  # the id still blocks the retry
    assert forget(client, user) == 0


def test_forget_user_on_sqlite_is_durable_at_the_answer(tiny_build, fresh_state: Path, triton_server_factory, capsys):
    repo = Path(tiny_build["repositories"]["embedded"])
    url = f"sqlite:///{fresh_state}"
    env = {"FRESHREC_STATE": url, "FRESHREC_FORGET_KEY": KEY}
    server = triton_server_factory(repo, env=env)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    user, second = users_of(fresh_state, 2)
    timings: list[float] = []
    _forget_and_check(client, url, user, timings)
    n_second = len(open_store(url).user_history(second, 10_000).item_ids)
    t0 = time.perf_counter()
    assert forget(client, second) == n_second
    timings.append((time.perf_counter() - t0) * 1e3)
    server.kill()  # SIGKILL right after the acknowledgement
    assert not server.is_alive()
    db = sqlite3.connect(str(fresh_state))
    assert db.execute("SELECT COUNT(*) FROM events WHERE user_id IN (?, ?)", (user, second)).fetchone()[0] == 0
    db.close()

    server = triton_server_factory(repo, env=env)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    _after_restart(client, url, user)
    _after_restart(client, url, second)
    with capsys.disabled():
        print(f"\nforget_user on sqlite, client-side ms (forget, repeat, forget): {[round(t, 1) for t in timings]}")


def test_forget_user_on_redis_is_durable_at_the_answer(tiny_build, redis_server, triton_server_factory, capsys):
    src = open_store(f"sqlite:///{Path(tiny_build['build_dir']) / 'state.db'}")
    dst = open_store(redis_server.url)
    copy_state(src, dst)
    src.close()
    dst.close()
    repo = Path(tiny_build["repositories"]["embedded"])
    env = {"FRESHREC_STATE": redis_server.url, "FRESHREC_FORGET_KEY": KEY}
    server = triton_server_factory(repo, env=env)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    user, second = sorted(users_of_store(redis_server.url))[:2]
    timings: list[float] = []
    _forget_and_check(client, redis_server.url, user, timings)
    n_second = len(open_store(redis_server.url).user_history(second, 10_000).item_ids)
    t0 = time.perf_counter()
    assert forget(client, second) == n_second
    timings.append((time.perf_counter() - t0) * 1e3)
    server.kill()  # SIGKILL right after the acknowledgement, and of Redis too: only the fsynced AOF remains
    redis_server.restart()

    server = triton_server_factory(repo, env=env)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    _after_restart(client, redis_server.url, user)
    _after_restart(client, redis_server.url, second, sent_id=False)
    with capsys.disabled():
        print(f"\nforget_user on redis, client-side ms (forget, repeat, forget): {[round(t, 1) for t in timings]}")


def test_forget_user_is_refused_without_a_configured_key(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    user = users_of(served.state_path, 1)[0]
    exc = _refused(lambda: forget(client, user, "anything"))
    assert exc.status() == "StatusCode.UNIMPLEMENTED" and "FRESHREC_FORGET_KEY" in exc.message(), exc
    db = sqlite3.connect(str(served.state_path))
    assert db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (user,)).fetchone()[0] > 0  # nothing removed


def test_check_key_refuses_a_wrong_key_and_a_server_without_one():
    from freshrec.server_ext.service import Disabled, KeyRefused, check_key

    check_key(KEY, KEY)
    for sent in ("", "wrong", KEY + "x", KEY.upper()):
        with pytest.raises(KeyRefused, match="forget key"):
            check_key(sent, KEY)
    with pytest.raises(Disabled, match="FRESHREC_FORGET_KEY"):
        check_key(KEY, "")


def test_forget_user_runs_on_one_cpu_instance(tiny_build):
    from freshrec.export.repository import read_config

    repo = Path(tiny_build["repositories"]["embedded"])
    config = read_config(repo / "forget_user")
    assert [(g.kind, g.count) for g in config.instance_group] == [(config.instance_group[0].KIND_CPU, 1)]
    assert [i.name for i in config.input] == ["user_id", "key"] and [o.name for o in config.output] == ["removed"]

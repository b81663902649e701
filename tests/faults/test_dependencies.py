"""RELIABILITY 10, 12 and issue 15: the state store goes away in the middle of traffic. Writes
fail with UNAVAILABLE and are never acknowledged while it is away, every acknowledged write is
there afterwards, nothing refused is invented, and service comes back by itself."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from freshrec.store import open_store
from tests.faults.traffic import Load
from tests.triton_calls import ingest


class Writes:
    """One client ingesting one event at a time, each with its own event id, recording what the
    server acknowledged and what it refused (and how)."""

    def __init__(self, url: str, user: str, prefix: str) -> None:
        self.url, self.user, self.prefix = url, user, prefix
        self.acked: dict[str, float] = {}
        self.refused: dict[str, tuple[float, str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writes:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        for n in itertools.count():
            if self._stop.is_set():
                break
            event_id = f"{self.prefix}-{n}"
            t0 = time.monotonic()
            try:
                assert ingest(client, [self.user], [str(1 + n % 50)], [time.time()], event_ids=[event_id]) == 1
                self.acked[event_id] = t0
            except InferenceServerException as exc:
                self.refused[event_id] = (t0, (exc.status() or "").rsplit(".", 1)[-1], exc.message() or "")
                time.sleep(0.05)
        client.close()


def stored_ids(url: str, prefix: str) -> set[str]:
    store = open_store(url)
    try:
        return {e.event_id for e in store.events() if e.event_id and e.event_id.startswith(prefix + "-")}
    finally:
        store.close()


def outage(sup, store_url: str, down: Callable[[], None], up: Callable[[], None], seconds: float, *, reads_survive: bool,
           prefix: str = "dep") -> None:  # fmt: skip
    with Load(sup.server.grpc_url, sup.users, threads=2) as load, Writes(sup.server.grpc_url, sup.users[1], prefix) as writes:
        time.sleep(2.0)
        went_down = time.monotonic()
        down()
        time.sleep(seconds)
        came_up = time.monotonic()
        up()
        time.sleep(4.0)  # a request started just before `up` may still wait out the store's timeout
        settled = time.monotonic() - 1.0
    assert sup.server.is_alive()
    queue_refusal, store_refusal = ("UNAVAILABLE", "Request timeout expired"), ("UNAVAILABLE", "state store unavailable; retry later")
    # Writes: refused by the store only while it was away, always UNAVAILABLE with the service's own
    # text. (A write sent just before the store went away may wait out its timeout; the first one after
    # it is back may meet the connection the server has not yet replaced.) The queue may also refuse
    # one on a stalled machine (see the reads below): retriable, never computed, so never stored.
    by_store = [t0 for t0, code, msg in writes.refused.values() if (code, msg) == store_refusal]
    assert by_store, "no write met the outage"
    assert all(went_down - 6.0 <= t0 <= came_up + 2.0 for t0 in by_store)
    assert {(code, msg) for _, code, msg in writes.refused.values()} <= {store_refusal, queue_refusal}, writes.refused
    assert len(writes.refused) - len(by_store) <= 3, writes.refused
    assert any(t0 > came_up for t0 in writes.acked.values()), "writes did not come back"
    # Durability: every acknowledged event is stored; no event exists that the server did not see.
    stored = stored_ids(store_url, prefix)
    assert set(writes.acked) <= stored
    assert stored <= set(writes.acked) | set(writes.refused)
    # Reads: served throughout where the store allows it, else refused retriably by the service; all
    # served again once it settled. Besides the store's own refusal, a read may be refused by the queue
    # (UNAVAILABLE "Request timeout expired": it waited past the 100 ms queue timeout), retriably, when
    # the machine stalls: seen on a loaded 2-core CI machine in and outside the outage, never on a quiet
    # one. It is load shedding, not the store's doing, and must stay rare in every phase.
    phases = {"before": [r for r in load.records if r.start < went_down],
              "during": [r for r in load.records if went_down <= r.start < came_up],
              "settling": [r for r in load.records if came_up <= r.start <= settled],
              "after": [r for r in load.records if r.start > settled]}  # fmt: skip
    timeline = [(round(r.start - went_down, 2), round(r.latency_s, 3), r.code, r.message) for r in load.records if r.code != "OK"]
    failed = {(r.code, r.message) for r in load.records if r.code != "OK"}
    assert failed <= ({queue_refusal} if reads_survive else {queue_refusal, store_refusal}), timeline[:10]
    for name, reads in phases.items():
        shed = sum((r.code, r.message) == queue_refusal for r in reads)
        assert shed <= max(3, 0.02 * len(reads)), (name, len(reads), timeline[:10])
    assert phases["after"] and all(r.code == "OK" or (r.code, r.message) == queue_refusal for r in phases["after"]), timeline[:10]
    if reads_survive:
        # Nothing but the queue's rare shedding, and no read waits on the write lock (the busy timeout is 5 s).
        served = sorted(r.latency_s for r in phases["during"] if r.code == "OK")
        assert len(served) >= 0.95 * len(phases["during"]) > 0, (len(served), len(phases["during"]), timeline[:10])
        assert served[len(served) // 2] < 0.5, served[len(served) // 2]


def test_sqlite_locked_by_another_process_mid_traffic(supervised) -> None:
    """Another process holds the SQLite database's write lock past the busy timeout (5 s): writes
    time out as UNAVAILABLE and are not kept; reads go on (WAL readers are never blocked)."""
    sup = supervised()
    url = f"sqlite:///{sup.state_path}"
    holder: dict[str, sqlite3.Connection] = {}

    def lock() -> None:
        holder["db"] = sqlite3.connect(str(sup.state_path), isolation_level=None)
        holder["db"].execute("BEGIN EXCLUSIVE")

    def unlock() -> None:
        holder["db"].execute("ROLLBACK")
        holder["db"].close()

    outage(sup, url, lock, unlock, seconds=8.0, reads_survive=True)


def test_redis_killed_mid_traffic(supervised, redis_server, tiny_build) -> None:
    """Redis SIGKILLed under reads and writes, then restarted on its AOF: UNAVAILABLE while it is
    down (1 s socket timeout), nothing acknowledged lost, service back without a restart."""
    from freshrec.store import copy_state

    src, dst = open_store(f"sqlite:///{tiny_build['build_dir'] / 'state.db'}"), open_store(redis_server.url)
    copy_state(src, dst)
    src.close()
    dst.close()
    sup = supervised(env={"FRESHREC_STATE": redis_server.url})
    outage(sup, redis_server.url, redis_server.kill, redis_server.start, seconds=4.0, reads_survive=False)


@pytest.mark.faults
def test_redis_killed_three_times(supervised, redis_server, tiny_build) -> None:
    from freshrec.store import copy_state

    src, dst = open_store(f"sqlite:///{tiny_build['build_dir'] / 'state.db'}"), open_store(redis_server.url)
    copy_state(src, dst)
    src.close()
    dst.close()
    sup = supervised(env={"FRESHREC_STATE": redis_server.url})
    for n in range(3):
        outage(sup, redis_server.url, redis_server.kill, redis_server.start, seconds=6.0, reads_survive=False, prefix=f"dep{n}")

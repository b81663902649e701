"""RELIABILITY 15, 21: a SIGKILLed Python-backend stub under load. Triton 2.51 never notices (issue
15 item 2); the supervisor turns readiness false within a scan, reloads the model, and service is
whole again by itself (targets: readiness false within 5 s, restored within 60 s, failures only
among the requests in flight at the kill and those sent while readiness was false)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from freshrec.server_ext.supervisor import stubs_of
from tests.faults.conftest import status
from tests.faults.traffic import Load

#: What a request may fail with while a stub is dead: routed to it (Triton's 1 s health timeout),
#: or queued behind it past the queue timeout.
DEAD_STUB_ERRORS = {("INTERNAL", "Stub process 'recommend_0_0' is not healthy."), ("UNAVAILABLE", "Request timeout expired")}


#: Triton 2.51's own abort when the killed stub held the Python backend's shared-memory lock
#: (triton-inference-server/server#8882 and #5949: "terminate called after throwing an instance of
#: 'boost::interprocess::lock_exception'"): tritonserver itself exits, which no supervisor inside
#: the pod can mend (the kubelet restarts the pod: its liveness probe fails).
TRITON_LOCK_ABORT = "boost::interprocess::lock_exception"


def triton_aborted_on_the_stub_lock(sup) -> bool:
    return not sup.server.is_alive() and TRITON_LOCK_ABORT in sup.server.log_path.read_text(errors="replace")


def kill_and_watch(sup, load: Load) -> dict | None:
    """Kills recommend_0_0 and times readiness going and coming back; None when tritonserver itself
    aborted on the dead stub's lock (TRITON_LOCK_ABORT), which only a new server mends."""
    before = {s.pid for s in stubs_of(sup.server.pid) if s.model == "recommend"}
    stub = next(s for s in stubs_of(sup.server.pid) if s.instance == "recommend_0_0")
    killed = time.monotonic()
    os.kill(stub.pid, signal.SIGKILL)
    unready = restored = None
    while time.monotonic() - killed < 90:
        if triton_aborted_on_the_stub_lock(sup):
            return None
        ok = status(f"{sup.health_url}/ready") == 200
        if not ok and unready is None:
            unready = time.monotonic()
        if ok and unready is not None:
            restored = time.monotonic()
            break
        time.sleep(0.05)
    assert unready is not None and restored is not None, sup.health()
    time.sleep(3.0)  # traffic after the restore: every request must succeed
    return {"killed": killed, "unready": unready, "restored": restored, "pid": stub.pid, "before": before}


def check_one_kill(sup, load: Load, t: dict) -> None:
    assert t["unready"] - t["killed"] < 5.0, "readiness turned false too late"
    assert t["restored"] - t["killed"] < 60.0
    records = load.between(t["killed"] - 2.0)  # the previous kill, if any, ended earlier
    in_flight = [r for r in records if r.start < t["killed"] < r.end]
    failed = [r for r in records if r.code != "OK"]
    # Every failure is a request in flight at the kill or sent before readiness came back, and says why.
    assert all(r.start < t["restored"] for r in failed), [(r.start - t["killed"], r.code) for r in failed]
    assert {(r.code, r.message) for r in failed} <= DEAD_STUB_ERRORS, {(r.code, r.message) for r in failed}
    assert len([r for r in failed if r.start < t["unready"]]) <= len(in_flight) + 1
    after = load.between(t["restored"])
    assert after and all(r.code == "OK" for r in after)
    fresh = [s for s in stubs_of(sup.server.pid) if s.model == "recommend" and s.pid not in t["before"]]
    assert sorted(s.instance for s in fresh) == ["recommend_0_0", "recommend_0_1"]  # a new generation
    assert status(f"http://{sup.server.http_url}/v2/models/recommend/ready") == 200
    assert status(f"{sup.health_url}/live") == 200


def test_a_killed_stub_turns_readiness_false_and_comes_back(supervised) -> None:
    # Once more on a new server if tritonserver itself aborted on the dead stub's lock (an upstream
    # crash, seen once on a 2-core machine); twice in a row fails the test.
    for attempt in (1, 2):
        sup = supervised()
        sup.retire_after_s = 1.0
        with Load(sup.server.grpc_url, sup.users, threads=4) as load:
            time.sleep(2.0)
            t = kill_and_watch(sup, load)
        if t is not None:
            break
        assert attempt == 1, f"tritonserver aborted on the killed stub's lock twice:\n{sup.server.log_tail()}"
    check_one_kill(sup, load, t)
    # The old generation's surviving stub (2.51 never releases it) is gone too, without a failure.
    assert sorted(s.instance for s in stubs_of(sup.server.pid) if s.model == "recommend") == ["recommend_0_0", "recommend_0_1"]
    events = [what for _, what, _ in sup.events]
    assert events == ["dead", "reloaded", "retired"], sup.events
    started = time.monotonic()
    assert sup.drain() == 0  # 2.51 never releases the old generation; the drain does not wait for it
    assert time.monotonic() - started < 10


@pytest.mark.faults
def test_three_kills_in_a_row_each_recover(supervised) -> None:
    sup = supervised()
    sup.retire_after_s = 2.0
    with Load(sup.server.grpc_url, sup.users, threads=4) as load:
        time.sleep(2.0)
        for _ in range(3):
            t = kill_and_watch(sup, load)
            assert t is not None, f"tritonserver aborted on the killed stub's lock:\n{sup.server.log_tail()}"
            check_one_kill(sup, load, t)
            time.sleep(sup.retire_after_s + 1)
    assert [what for _, what, _ in sup.events].count("reloaded") == 3
    assert [what for _, what, _ in sup.events].count("retired") == 3  # each old generation's healthy stub

"""RELIABILITY 13, 14 and issue 15 item 3: load above capacity gets a fast retriable refusal from
the bounded queue instead of an ever longer wait, a storm of expiring deadlines is mostly never
computed, and the server serves normally once the load drops (before: no error at all, p99
climbing with the queue, and after a storm the backlog never drained). The figures measured
against the issue's targets are in docs/reliability.md; the bounds here are looser, for a
shared 2-core CI machine."""

from __future__ import annotations

import time

import pytest

from tests.faults.traffic import burst, metric, percentile

QUEUE_REFUSALS = {"Exceeds maximum queue size", "Request timeout expired"}


def refusal_text(message: str) -> str:
    return message.split("] ", 1)[-1]  # Triton prefixes "[request id: ...] "


def assert_recovered(sup) -> None:
    """Load back to one client: once what was queued has timed out (100 ms), every request
    succeeds at its ordinary speed."""
    time.sleep(0.5)
    after, _ = burst(sup.server.grpc_url, sup.users, 1, 2.0)
    assert len(after) >= 50 and all(r.code == "OK" for r in after), {r.code for r in after}
    assert percentile([r.latency_s for r in after], 50) < 0.05


def steady_part(records: list, warmup_s: float = 1.0) -> list:
    """Without the first second, while 64 clients connect and the first wave lands at once."""
    start = min(r.start for r in records)
    return [r for r in records if r.start >= start + warmup_s]


def run_overload(sup, seconds: float, p99_bound_s: float = 0.25) -> None:
    records, _ = burst(sup.server.grpc_url, sup.users, 64, seconds + 1.0, deadline_s=5.0, backoff_s=0.02)
    records = steady_part(records)
    refused = [r for r in records if r.code != "OK"]
    admitted = [r.latency_s for r in records if r.code == "OK"]
    assert {(r.code, refusal_text(r.message)) for r in refused} <= {("UNAVAILABLE", t) for t in QUEUE_REFUSALS}
    assert len(refused) > 0.1 * len(records)  # the queue bound refuses; an unbounded queue never does
    assert len(admitted) > 100
    assert percentile(admitted, 99) < p99_bound_s  # bounded by the queue (measured: ~0.1 s, docs/reliability.md)
    assert percentile([r.latency_s for r in refused], 50) < 0.02  # refused at once, not after a wait
    assert_recovered(sup)


def run_storm(sup, seconds: float) -> None:
    url = sup.server.metrics_url
    computed_before = metric(url, "freshrec_stage_latency_seconds_count", model="recommend", stage="store")
    storm, probe = burst(sup.server.grpc_url, sup.users, 64, seconds, deadline_s=0.05, backoff_s=0.0, probe_deadline_s=5.0)
    probe = steady_part(probe)
    computed = metric(url, "freshrec_stage_latency_seconds_count", model="recommend", stage="store") - computed_before
    assert sup.server.is_alive()
    assert {r.code for r in storm} <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert computed < 0.25 * len(storm), (computed, len(storm))  # expired and refused requests cost nothing
    # The well-behaved client beside it: refused at times (a queue cannot tell clients apart),
    # always with a retriable code, and what it is served stays bounded by the queue.
    assert {r.code for r in probe} <= {"OK", "UNAVAILABLE"}
    served = [r.latency_s for r in probe if r.code == "OK"]
    assert served and percentile(served, 99) < 0.5
    assert_recovered(sup)


def test_overload_is_refused_fast_and_recovers(supervised) -> None:
    # Short run on whatever machine runs `make test`: the refusals and their codes are the point;
    # the latency bound is the unbounded-queue failure's (climbing without limit), not the target.
    run_overload(supervised(), seconds=5.0, p99_bound_s=0.75)


def test_deadline_storm_is_not_computed_and_recovers(supervised) -> None:
    run_storm(supervised(), seconds=5.0)


@pytest.mark.faults
def test_long_overload_then_three_storms(supervised) -> None:
    sup = supervised()
    run_overload(sup, seconds=20.0)
    for _ in range(3):  # before: the second storm already found a backlog that never drained
        run_storm(sup, seconds=15.0)

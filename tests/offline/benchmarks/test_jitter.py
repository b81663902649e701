"""The machine-burst probe (freshrec/jitter.py): burst windows, attribution of a run's tail, and
the probe process itself."""

from __future__ import annotations

import math

from freshrec.offline.benchmarks.jitter import Probe, attribute, bursts

MS = 1_000_000


def _samples(slow_at: set[int], n: int = 100, cpu: int = 100_000, factor: int = 10) -> list[tuple[int, int, int]]:
    """One sample every 20 ms, 0.1 ms of CPU each; those in `slow_at` took `factor` times longer."""
    out = []
    for i in range(n):
        c = cpu * (factor if i in slow_at else 1)
        out.append((i * 20 * MS, i * 20 * MS + c, c))
    return out


def test_bursts_merge_consecutive_slow_samples_and_widen_to_neighbours() -> None:
    b = bursts(_samples({10, 11, 12, 50}))
    assert len(b) == 2
    first, second = b
    assert first["start_ns"] == 9 * 20 * MS + 100_000 and first["end_ns"] == 13 * 20 * MS  # from the fast sample before to the one after
    assert math.isclose(first["worst"], 10.0)
    assert second["start_ns"] < 50 * 20 * MS < second["end_ns"]


def test_bursts_need_a_baseline_and_a_threshold() -> None:
    assert bursts(_samples({1}, n=5)) == []  # too few samples for a median
    assert bursts(_samples({10, 20}, factor=2)) == []  # 2x is below the 3x threshold


def test_attribute_separates_burst_requests_from_the_rest() -> None:
    samples = _samples({25, 26})  # a burst from ~480 ms to 540 ms
    # 200 requests of 5 ms back to back over 0..1000 ms; the four inside the burst took 40 ms
    reqs = []
    for i in range(200):
        s = i * 5 * MS
        slow = 500 * MS <= s < 520 * MS
        reqs.append((s, s + (40 if slow else 5) * MS))
    a = attribute(reqs, samples)
    assert a["bursts"] == 1 and a["slowest_1pct"] == 2 and a["slowest_1pct_in_bursts"] == 2
    assert 2 <= a["requests_in_bursts"] < 20
    assert math.isclose(a["p99_outside_bursts_ms"], 5.0) and a["p99_ms"] > 30
    assert math.isclose(a["worst_slowdown"], 10.0) and 0 < a["slow_fraction"] < 0.1


def test_attribute_a_tail_of_the_service_own_is_not_blamed_on_the_machine() -> None:
    samples = _samples({25, 26})
    reqs = [(i * 5 * MS, i * 5 * MS + (40 if i in (10, 11, 150, 151) else 5) * MS) for i in range(200)]  # slow requests away from the burst
    a = attribute(reqs, samples)
    assert a["slowest_1pct_in_bursts"] == 0 and a["p99_outside_bursts_ms"] > 30
    assert attribute([], samples) == {} and attribute(reqs, samples[:5]) == {}


def test_probe_process_samples_in_cpu_time() -> None:
    import time

    with Probe(interval_ms=5) as p:
        time.sleep(0.5)
    assert len(p.samples) >= 20
    starts = [s for s, _, _ in p.samples]
    assert starts == sorted(starts) and abs(starts[-1] / 1e9 - time.time()) < 5  # wall-clock ns, like perf_analyzer's timestamps
    assert all(e >= s and c > 0 for s, e, c in p.samples)

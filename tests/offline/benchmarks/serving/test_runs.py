"""One perf_analyzer run (serving/runs.py): the real perf_analyzer over gRPC against tritonserver
on the tiny build, and the watchdog that cuts off a run that hangs or stalls.

perf_analyzer is fetched by freshrec.offline.benchmarks.perf_analyzer (pip download + Debian 13
runtime on glibc < 2.38). If it cannot be fetched the tests fail: CI has the same registries as
development.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from freshrec.offline.benchmarks.serving import runs
from freshrec.offline.benchmarks.serving.plan import Spec
from freshrec.offline.benchmarks.serving.server import Server


# -- the real thing: perf_analyzer over gRPC against tritonserver on the tiny build -------------------
@pytest.mark.parametrize("engine", ["inprocess", "bls"])
def test_perf_analyzer_smoke_over_grpc(tiny_inputs, tiny_build, fresh_state: Path, triton_server_factory, tmp_path: Path, engine: str) -> None:
    from freshrec.offline.benchmarks.perf_analyzer import perf_analyzer_command

    pa = perf_analyzer_command()  # raises (the test fails, never skips) if it cannot be fetched
    _ds, paths, _specs, repo = tiny_inputs
    url = f"sqlite:///{fresh_state}"
    env = {"FRESHREC_STATE": url, "FRESHREC_ENGINE": engine}
    handle = triton_server_factory(repo, env=env)  # perf_analyzer reads config and statistics: open by default
    server = Server("smoke", repo, url, env=env, handle=handle)
    assert server.engine == engine
    raw = tmp_path / "raw"
    rec = runs.run_one(pa, Spec("recommend", "recommend", (1,), 30, 3), 1, paths["recommend"][1], server, raw, log=lambda _m: None)
    ing = runs.run_one(pa, Spec("ingest_events", "ingest_events", (1,), 30, 0), 1, paths["ingest_events"][1], server, raw, log=lambda _m: None)
    towers = ("user_tower", "reranker") if engine == "bls" else ()  # in-process towers get no Triton requests
    for r, models in ((rec, ("recommend", *towers)), (ing, ("ingest_events",))):
        assert r["engine"] == engine
        assert r["throughput"] > 0 and r["throughput_perf_analyzer"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert set(r["server"]) == set(models), sorted(r["server"])
        for m in models:  # every model row: the parent and each composing model served the requests
            assert r["server"][m]["requests"] >= 30 and r["server"][m]["failures"] == 0
            assert r["server"][m]["queue_plus_overhead_ms"] >= 0
        assert r["command"].startswith("perf_analyzer -m ") and "-i grpc" in r["command"]
    assert set(rec["perf_analyzer_composing"]) == set(towers)
    assert ("--bls-composing-models" in rec["command"]) == (engine == "bls")
    # The per-stage split from freshrec's own stage metrics, whichever engine runs the towers.
    stages = rec["stages"]["recommend"]
    for stage in ("store", "user_tower", "retrieval", "rerank"):
        assert stages[stage]["calls"] >= 30 and stages[stage]["ms"] > 0, (stage, stages)
    assert sum(v["ms"] for v in stages.values()) < rec["server"]["recommend"]["compute_infer_ms"]
    assert ing["stages"] == {"ingest_events": {"store": ing["stages"]["ingest_events"]["store"]}}
    assert ing["stages"]["ingest_events"]["store"]["calls"] == 30
    # Every ingest request stored a new event (no idempotent replays).
    from freshrec.store import open_store

    stored = open_store(f"sqlite:///{fresh_state}").events()
    assert sum((e.event_id or "").startswith("bench-t0-") for e in stored) == 30


def _hanging_run(monkeypatch: pytest.MonkeyPatch, triton_stats, first_line: str) -> tuple[Any, list[str]]:
    """A stand-in server (statistics from `triton_stats`, a log tail) and a "perf_analyzer" that
    prints `first_line` and never exits."""
    import sys
    from types import SimpleNamespace

    monkeypatch.setattr(runs, "triton_stats", triton_stats)
    monkeypatch.setattr(runs, "stage_stats", lambda url: {})
    handle = SimpleNamespace(grpc_url="127.0.0.1:1", metrics_url="http://127.0.0.1:1/metrics", log_tail=lambda n: "server log line")
    hang = [sys.executable, "-c", f"import time; print({first_line!r}, flush=True); time.sleep(60)"]
    return SimpleNamespace(engine="inprocess", handle=handle), hang


def test_a_hung_perf_analyzer_run_is_logged_retried_once_then_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that never finishes (perf_analyzer stalls now and then) does not stall the benchmark for
    ever: it is cut off, its output and the server's log are kept, it runs once more, then the bench
    fails. Each attempt reads its own statistics baseline."""
    monkeypatch.setattr(runs, "RUN_TIMEOUT_S", 0.5)
    stats_reads: list[str] = []
    server, hang = _hanging_run(monkeypatch, lambda url: stats_reads.append(url) or {}, "started")
    spec = Spec("recommend", "recommend", (1,), 1, 0)
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="stalled on recommend at concurrency 1 twice \\(did not finish in 1 s\\)"):
        runs.run_one(hang, spec, 1, tmp_path / "in.json", server, tmp_path / "raw", log=lines.append)
    assert len(lines) == 1 and "running it again" in lines[0]
    for attempt in (1, 2):
        kept = (tmp_path / "raw" / f"recommend.c1.stalled{attempt}.log").read_text()
        assert "started" in kept and "server log line" in kept
    # per attempt: the baseline before it, the stall checks while it ran, and the diagnostic after it
    assert len(stats_reads) >= 6 and len(set(stats_reads)) == 1


def _stats(requests: int) -> dict[str, dict[str, dict[str, int]]]:
    keys = ("executions", "request_ns", "queue_ns", "compute_input_ns", "compute_infer_ns", "compute_output_ns", "failures")
    return {"recommend": {"requests": requests, **{k: requests if k == "executions" else 0 for k in keys}}}


def test_a_run_still_going_after_the_server_answered_everything_is_cut_off_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """perf_analyzer's stall: the server has answered every request the run was to send (warm-up
    included), yet perf_analyzer never exits. The run is cut off STALL_GRACE_S after that, long
    before its time limit, logged with the server's count, and run again; a run whose requests
    are not all answered yet is left alone."""
    monkeypatch.setattr(runs, "STALL_GRACE_S", 0.5)
    monkeypatch.setattr(runs, "POLL_S", 0.1)
    answered = iter([0, 9, 20, 26, 26] * 2)  # per attempt: the baseline, the count growing to 10 + 16 (warm-up), the diagnostic
    server, hang = _hanging_run(monkeypatch, lambda url: _stats(next(answered)), "settings printed")
    spec = Spec("recommend", "recommend", (1,), 10, 16)
    lines: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stalled on recommend at concurrency 1 twice \\(still running"):
        runs.run_one(hang, spec, 1, tmp_path / "in.json", server, tmp_path / "raw", log=lines.append)
    assert time.monotonic() - t0 < 20  # the time limit would have been 60 + 0.25 * 26 s per attempt
    assert len(lines) == 1 and "after the server had answered all 26 requests" in lines[0]
    kept = (tmp_path / "raw" / "recommend.c1.stalled1.log").read_text()
    assert "settings printed" in kept and "server log line" in kept and "completed 26 and failed 0 recommend" in kept

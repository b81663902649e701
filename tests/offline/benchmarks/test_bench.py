"""`freshrec bench serving`: the real perf_analyzer over gRPC against a real tritonserver (tiny build), and
unit tests of its output parsing and of the input-data generation.

perf_analyzer is fetched by freshrec.offline.benchmarks.perf_analyzer (pip download + Debian 13 runtime on glibc <
2.38). If it cannot be fetched the tests fail: CI has the same registries as development.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from freshrec.offline.benchmarks import serving as bench
from freshrec.offline.benchmarks.serving import Dataset, Server, Spec

# Captured from perf_analyzer 2.60.0 (gRPC, --verbose-csv, --bls-composing-models user_tower,reranker).
CSV_TEXT = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "request/response,response wait\n"
    "1,74.9423,10,1458,35,34,9877,283,6,10863,15476,17264,29338,16,11660\n"
    "2,120.5,11,1500,40,30,12000,300,6,15000,20000,22000,30000,16,15000\n"
)
STDOUT_TEXT = """ Successfully read data for 1 stream/streams with 3 step/steps.
*** Measurement Settings ***
  Batch size: 1
  Sending 20 warmup requests
  Sending 300 benchmark requests

Request concurrency: 1
Request concurrency: 1
  Client: 
    Request count: 300
    Throughput: 74.9423 infer/sec
    p50 latency: 10863 usec
    p90 latency: 15476 usec
    p95 latency: 17264 usec
    p99 latency: 29338 usec
    Avg gRPC time: 11676 usec ((un)marshal request/response 16 usec + response wait 11660 usec)
  Server: 
    Inference count: 300
    Execution count: 300
    Successful request count: 300
    Avg request latency: 10232 usec (overhead 7792 usec + queue 685 usec + compute 1755 usec)

  Composing models: 
  reranker, version: 1
      Inference count: 300
      Execution count: 300
      Successful request count: 300
      Avg request latency: 1360 usec (overhead 3 usec + queue 357 usec + compute input 39 usec + compute infer 853 usec + compute output 107 usec)
  user_tower, version: 1
      Inference count: 300
      Execution count: 290
      Successful request count: 300
      Avg request latency: 1087 usec (overhead 4 usec + queue 328 usec + compute input 36 usec + compute infer 683 usec + compute output 35 usec)
Inferences/Second vs. Client p99 Batch Latency
Concurrency: 1, throughput: 74.9423 infer/sec, latency 29338 usec
"""


# -- parsing -------------------------------------------------------------------------------------
def test_parse_csv_rows_and_units() -> None:
    rows = bench.parse_csv(CSV_TEXT)
    assert [r["concurrency"] for r in rows] == [1, 2]
    r = rows[0]
    assert r["throughput"] == pytest.approx(74.9423)
    assert (r["p50_us"], r["p90_us"], r["p95_us"], r["p99_us"]) == (10863, 15476, 17264, 29338)
    assert r["server_queue_us"] == 35 and r["server_compute_infer_us"] == 9877
    assert r["grpc_response_wait_us"] == 11660


def test_parse_csv_rejects_empty() -> None:
    with pytest.raises(ValueError):
        bench.parse_csv(CSV_TEXT.splitlines()[0] + "\n")


def test_parse_stdout_client_server_and_composing() -> None:
    out = bench.parse_stdout(STDOUT_TEXT)
    assert list(out) == [1]
    c = out[1]
    assert c["client"] == {"requests": 300, "throughput": 74.9423, "p50_us": 10863, "p90_us": 15476, "p95_us": 17264, "p99_us": 29338}
    assert c["server"]["request_us"] == 10232 and c["server"]["overhead_us"] == 7792 and c["server"]["compute_us"] == 1755
    assert set(c["composing"]) == {"reranker", "user_tower"}
    ut = c["composing"]["user_tower"]
    assert ut == {"inference_count": 300, "execution_count": 290, "successful_request_count": 300, "request_us": 1087,
                  "overhead_us": 4, "queue_us": 328, "compute_input_us": 36, "compute_infer_us": 683, "compute_output_us": 35}  # fmt: skip


def test_parse_profile_export_throughput_from_timestamps() -> None:
    ms = 1_000_000
    reqs = [{"timestamp": i * 10 * ms, "response_timestamps": [i * 10 * ms + 8 * ms]} for i in range(101)]
    reqs.append({"timestamp": 5, "response_timestamps": []})  # no response: not counted
    p = bench.parse_profile_export(json.dumps({"experiments": [{"experiment": {}, "requests": reqs, "window_boundaries": [0, 2]}]}))
    assert p["requests"] == 101
    assert p["seconds"] == pytest.approx(1.008)
    assert p["throughput"] == pytest.approx(101 / 1.008)
    assert p["p50_ms"] == pytest.approx(8.0) and p["p99_ms"] == pytest.approx(8.0)


def test_stats_delta_overhead_and_models_without_traffic() -> None:
    z = {"requests": 0, "executions": 0, "request_ns": 0, "queue_ns": 0, "compute_input_ns": 0, "compute_infer_ns": 0,
         "compute_output_ns": 0, "failures": 0}  # fmt: skip
    before = {"a": dict(z), "b": dict(z)}
    after = {"a": {**z, "requests": 10, "executions": 5, "request_ns": 10_000_000, "queue_ns": 1_000_000, "compute_input_ns": 500_000,
                   "compute_infer_ns": 7_000_000, "compute_output_ns": 500_000}, "b": dict(z)}  # fmt: skip
    d = bench.stats_delta(before, after)
    assert set(d) == {"a"}
    a = d["a"]
    assert a["avg_batch"] == 2.0 and a["request_ms"] == pytest.approx(1.0) and a["queue_ms"] == pytest.approx(0.1)
    assert a["overhead_ms"] == pytest.approx(0.1) and a["queue_plus_overhead_ms"] == pytest.approx(0.2)


def test_targets_and_report_render(tmp_path: Path) -> None:
    def run(model: str, c: int, p50: float, p99: float, thr: float, server: dict) -> dict[str, Any]:
        return {"model": model, "concurrency": c, "requests": 10, "throughput": thr, "throughput_perf_analyzer": thr, "p50_ms": p50,
                "p90_ms": p99, "p95_ms": p99, "p99_ms": p99, "server": server, "command": f"perf_analyzer -m {model}"}  # fmt: skip

    srv = {"requests": 10, "avg_batch": 1.0, "request_ms": 1.15, "queue_ms": 0.1, "compute_input_ms": 0.0, "compute_infer_ms": 1.0, "compute_output_ms": 0.0,
           "overhead_ms": 0.05, "queue_plus_overhead_ms": 0.15}  # fmt: skip
    summary = {
        "date_utc": "2026-11-28 12:00", "seconds": 1.0, "smoke": True, "repository": "r", "catalog_items_served": 1682, "index": "exact",
        "machine": {"cpu": "x", "cores": 2, "ram_gib": 1.0, "os": "o", "kernel": "k", "glibc": "2.36", "python": "3.11",
                    "tritonserver": "2.51", "onnxruntime": "1", "torch": "2", "load_average_at_start": [0.0, 0.0, 0.0]},
        "perf_analyzer": {"version": "2.60.0"},
        "results": {
            "recommend": {"1": run("recommend", 1, 5.0, 15.0, 150.0, {"recommend": srv, "user_tower": {**srv, "queue_plus_overhead_ms": 0.5}}),
                          "4": run("recommend", 4, 20.0, 70.0, 180.0, {})},
            "ingest_events": {"1": run("ingest_events", 1, 1.0, 6.0, 500.0, {"ingest_events": srv})},
        },
    }  # fmt: skip
    t = {x["target"]: x for x in bench.targets(summary)}
    assert t["recommend concurrency 1 p50 <= 8 ms"]["met"] and t["recommend concurrency 1 p99 <= 20 ms"]["met"]
    assert t[">= 100 recommendations/s with p99 <= 60 ms"]["measured"] == 150.0  # c=4 is over 60 ms p99
    assert not t["ingest_events p99 <= 5 ms (one event)"]["met"]
    assert not t["Triton queue + overhead <= 0.3 ms at concurrency 1: user_tower (inside recommend)"]["met"]
    assert t["Triton queue + overhead <= 0.3 ms at concurrency 1: recommend"]["met"]
    bench.write_docs(summary, tmp_path, log=lambda _m: None)
    md = (tmp_path / "serving.md").read_text()
    assert "perf_analyzer -m recommend" in md and "| recommend | 4 |" in md
    assert (tmp_path / "serving_latency_throughput.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["results"]["recommend"]["1"]["p99_ms"] == 15.0
    assert "**GPU**: unmeasured. No GPU was available" in md
    # The GPU line says what was served: a GPU repository on a GPU, or CPU figures beside an idle GPU.
    gpu = {**summary, "machine": {**summary["machine"], "gpu": "NVIDIA H200"}}
    assert "**GPU**: served on NVIDIA H200 (instance groups KIND_GPU" in bench.render_md({**gpu, "device": "gpu"})
    assert "instance groups are KIND_CPU: CPU figures" in bench.render_md({**gpu, "device": "cpu"})


def test_variant_repository_changes_only_the_towers(tmp_path: Path) -> None:
    base = tmp_path / "base"
    for m in ("user_tower", "recommend"):
        (base / m / "1").mkdir(parents=True)
        (base / m / "1" / "model.py").write_text("x")
        cfg = 'name: "%s"\ninstance_group {\n  count: 1\n  kind: KIND_CPU\n}\n' % m
        if m == "user_tower":
            cfg += 'dynamic_batching {\n  max_queue_delay_microseconds: 200\n}\nparameters {\n  key: "ort_threads"\n  value {\n    string_value: "1"\n  }\n}\n'
        (base / m / "config.pbtxt").write_text(cfg)
    from freshrec.export.repository import read_config

    out = bench.variant_repository(base, tmp_path / "v", queue_delay_us=0, ort_threads=2, tower_instances=2)
    ut = read_config(out / "user_tower")
    assert ut.HasField("dynamic_batching") and ut.dynamic_batching.max_queue_delay_microseconds == 0
    assert ut.parameters["ort_threads"].string_value == "2" and [g.count for g in ut.instance_group] == [2]
    assert read_config(out / "recommend") == read_config(base / "recommend")
    assert (out / "user_tower" / "1" / "model.py").is_symlink()
    # from a delay of 0 (which text_format leaves out) to a set one
    (base / "user_tower" / "config.pbtxt").write_text('name: "user_tower"\ndynamic_batching {\n}\n')
    out = bench.variant_repository(base, tmp_path / "v2", queue_delay_us=200)
    assert read_config(out / "user_tower").dynamic_batching.max_queue_delay_microseconds == 200


# -- input data from the tiny build ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_inputs(tiny_build: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, dict, list[Spec], Path]:
    repo = Path(tiny_build["repositories"]["embedded"])
    ds = Dataset.load(f"sqlite:///{tiny_build['build_dir'] / 'state.db'}", repo)
    specs = bench.plan(smoke=True)
    out = tmp_path_factory.mktemp("bench_inputs")
    return ds, bench.generate_inputs(ds, repo, specs, out, token="t0"), specs, repo


def test_input_data_uses_real_users_and_contract_shapes(tiny_inputs, tiny_build) -> None:
    from freshrec.contract import BY_NAME

    ds, paths, specs, _repo = tiny_inputs
    assert set(paths) == {s.label for s in specs}
    from freshrec.store import open_store

    db = open_store(f"sqlite:///{tiny_build['build_dir'] / 'state.db'}")
    users, items = set(db.user_ids()), set(db.item_vectors_since(0)[0])
    db.close()
    rec = json.loads(paths["recommend"][1].read_text())["data"]
    assert rec and all(step["user_id"][0] in users and step["k"] == [10] for step in rec)
    for model in ("user_tower", "reranker", "text_encoder", "item_tower"):
        steps = json.loads(paths[model][1].read_text())["data"]
        contract = BY_NAME[model]
        assert steps and set(steps[0]) == set(contract.input_names), model
        for name, value in steps[0].items():
            content = value["content"] if isinstance(value, dict) else value
            shape = value["shape"] if isinstance(value, dict) else [len(value)]
            n = 1
            for d in shape:
                n *= d
            assert len(content) == n, (model, name)
    rr = json.loads(paths["reranker"][1].read_text())["data"][0]
    assert rr["candidate_vectors"]["shape"] == [ds.num_candidates, 64 if ds.max_history == 50 else rr["candidate_vectors"]["shape"][1]]
    assert rr["history_mask"]["content"][-1] is True  # left-padded: the newest event is last
    ing = json.loads(paths["ingest_events"][1].read_text())["data"]
    spec = next(s for s in specs if s.label == "ingest_events")
    ids = [s["event_id"]["content"][0] for s in ing]
    assert len(ids) >= spec.requests + spec.warmup and len(set(ids)) == len(ids)
    assert all(s["user_id"]["content"][0] in users and s["item_id"]["content"][0] in items for s in ing)
    up = json.loads(paths["upsert_items"][1].read_text())["data"]
    new = [s["item_id"]["content"][0] for s in up]
    assert len(set(new)) == len(new) and not set(new) & items and all(s["text"]["content"][0].strip() for s in up)


# -- the real thing: perf_analyzer over gRPC against tritonserver on the tiny build -------------------
@pytest.mark.parametrize("engine", ["inprocess", "bls"])
def test_perf_analyzer_smoke_over_grpc(tiny_inputs, tiny_build, fresh_state: Path, triton_server_factory, tmp_path: Path, engine: str) -> None:
    from freshrec.offline.benchmarks.perf_analyzer import perf_analyzer_command

    pa = perf_analyzer_command()  # raises (the test fails, never skips) if it cannot be fetched
    _ds, paths, _specs, repo = tiny_inputs
    url = f"sqlite:///{fresh_state}"
    env = {"FRESHREC_STATE": url, "FRESHREC_ENGINE": engine}
    handle = triton_server_factory(repo, env=env, restricted_apis=())
    server = Server("smoke", repo, url, env=env, handle=handle)
    assert server.engine == engine
    raw = tmp_path / "raw"
    rec = bench.run_one(pa, Spec("recommend", "recommend", (1,), 30, 3), 1, paths["recommend"][1], server, raw, log=lambda _m: None)
    ing = bench.run_one(pa, Spec("ingest_events", "ingest_events", (1,), 30, 0), 1, paths["ingest_events"][1], server, raw, log=lambda _m: None)
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


# -- fetching perf_analyzer ------------------------------------------------------------------------
def test_pins_and_private_apt_options(tmp_path: Path) -> None:
    from freshrec.offline.benchmarks import perf_analyzer as pa

    assert pa.PA_WHEEL.version == "2.60.0" and len(pa.PA_WHEEL.sha256) == 64
    assert {d.name for d in pa.DEBS} == {"libc6", "libstdc++6", "libgcc-s1", "libssl3t64", "zlib1g"}
    assert all(len(d.sha256) == 64 and d.filename.endswith("_amd64.deb") for d in pa.DEBS)
    opts = pa._apt_options(tmp_path)
    dirs = [o.split("=", 1)[1] for o in opts if o.startswith("Dir::") and "=" in o and o.split("=", 1)[1]]
    assert dirs and all(d.startswith(str(tmp_path)) for d in dirs)  # never the system's apt sources, lists or cache
    assert pa.glibc_version() is None or pa.glibc_version() >= (2, 17)


def test_checksum_mismatch_fails_loudly_and_deletes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from freshrec.offline.benchmarks import perf_analyzer as pa

    house = tmp_path / "house"
    house.mkdir()
    (house / pa.PA_WHEEL.filename).write_bytes(b"not the wheel")
    monkeypatch.setenv("FRESHREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FRESHREC_WHEELHOUSE", str(house))
    monkeypatch.delenv("FRESHREC_PERF_ANALYZER", raising=False)
    with pytest.raises(pa.PerfAnalyzerUnavailable, match="SHA-256 mismatch"):
        pa.ensure_perf_analyzer()
    assert not (tmp_path / "cache" / "wheels" / pa.PA_WHEEL.filename).exists()
    assert (house / pa.PA_WHEEL.filename).exists()  # the user's file is left alone


@pytest.mark.integration
def test_bench_smoke_end_to_end_writes_docs(tiny_build, tmp_path: Path) -> None:
    """`freshrec bench serving --smoke --only recommend,ingest_events`: its own server, runs/,
    serving.md with the command lines, summary.json with every figure, inputs kept for reruns."""
    from freshrec.offline.benchmarks.serving import BenchOptions, bench

    out = tmp_path / "docs"
    run = bench(BenchOptions(build=tiny_build["build_dir"], out=out, smoke=True, only=("recommend", "ingest_events")), log=lambda _m: None)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"recommend", "ingest_events"}
    for label in ("recommend", "ingest_events"):
        r = summary["results"][label]["1"]
        assert r["throughput"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert run["writes"]["events_stored"] == 40  # every ingest request stored a new event
    assert summary["index_recall"] == 1.0  # read from the server's freshrec_index_recall: the exact scan here
    assert summary["machine"]["cores"] and summary["perf_analyzer"]["version"].startswith("perf-analyzer==2.60.0")
    md = (out / "serving.md").read_text()
    assert "perf_analyzer -m recommend -i grpc" in md and "--bls-composing-models" not in md  # embedded: in-process towers
    assert "Where a recommendation's time goes" in md and "freshrec_stage_latency_seconds" in md
    assert (out / "inputs" / "main" / "recommend.json").exists() and (out / "inputs" / "main" / "ingest_events.c1.json").exists()
    assert any(t["target"].startswith("Triton queue + overhead") for t in summary["targets"])
    mb = summary["results"]["recommend"]["1"]["machine_bursts"]  # the jitter probe watched the run
    assert mb["requests"] == 40 and mb["probe_samples"] >= 10 and 0 <= mb["slowest_1pct_in_bursts"] <= mb["slowest_1pct"] == 1
    assert "## The machine's slow bursts" in md


def _hanging_run(monkeypatch: pytest.MonkeyPatch, triton_stats, first_line: str) -> tuple[Any, list[str]]:
    """A stand-in server (statistics from `triton_stats`, a log tail) and a "perf_analyzer" that
    prints `first_line` and never exits."""
    import sys
    from types import SimpleNamespace

    monkeypatch.setattr(bench, "triton_stats", triton_stats)
    monkeypatch.setattr(bench, "stage_stats", lambda url: {})
    handle = SimpleNamespace(grpc_url="127.0.0.1:1", metrics_url="http://127.0.0.1:1/metrics", log_tail=lambda n: "server log line")
    hang = [sys.executable, "-c", f"import time; print({first_line!r}, flush=True); time.sleep(60)"]
    return SimpleNamespace(engine="inprocess", handle=handle), hang


def test_a_hung_perf_analyzer_run_is_logged_retried_once_then_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that never finishes (perf_analyzer stalls now and then) does not stall the benchmark for
    ever: it is cut off, its output and the server's log are kept, it runs once more, then the bench
    fails. Each attempt reads its own statistics baseline."""
    from freshrec.offline.benchmarks import serving as bench

    monkeypatch.setattr(bench, "RUN_TIMEOUT_S", 0.5)
    stats_reads: list[str] = []
    server, hang = _hanging_run(monkeypatch, lambda url: stats_reads.append(url) or {}, "started")
    spec = bench.Spec("recommend", "recommend", (1,), 1, 0)
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="stalled on recommend at concurrency 1 twice \\(did not finish in 1 s\\)"):
        bench.run_one(hang, spec, 1, tmp_path / "in.json", server, tmp_path / "raw", log=lines.append)
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
    from freshrec.offline.benchmarks import serving as bench

    monkeypatch.setattr(bench, "STALL_GRACE_S", 0.5)
    monkeypatch.setattr(bench, "POLL_S", 0.1)
    answered = iter([0, 9, 20, 26, 26] * 2)  # per attempt: the baseline, the count growing to 10 + 16 (warm-up), the diagnostic
    server, hang = _hanging_run(monkeypatch, lambda url: _stats(next(answered)), "settings printed")
    spec = bench.Spec("recommend", "recommend", (1,), 10, 16)
    lines: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stalled on recommend at concurrency 1 twice \\(still running"):
        bench.run_one(hang, spec, 1, tmp_path / "in.json", server, tmp_path / "raw", log=lines.append)
    assert time.monotonic() - t0 < 20  # the time limit would have been 60 + 0.25 * 26 s per attempt
    assert len(lines) == 1 and "after the server had answered all 26 requests" in lines[0]
    kept = (tmp_path / "raw" / "recommend.c1.stalled1.log").read_text()
    assert "settings printed" in kept and "server log line" in kept and "completed 26 and failed 0 recommend" in kept

"""perf_analyzer's output read back (serving/pa_output.py): CSV, console report, profile export."""

from __future__ import annotations

import json

import pytest

from freshrec.offline.benchmarks.serving import pa_output


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
    rows = pa_output.parse_csv(CSV_TEXT)
    assert [r["concurrency"] for r in rows] == [1, 2]
    r = rows[0]
    assert r["throughput"] == pytest.approx(74.9423)
    assert (r["p50_us"], r["p90_us"], r["p95_us"], r["p99_us"]) == (10863, 15476, 17264, 29338)
    assert r["server_queue_us"] == 35 and r["server_compute_infer_us"] == 9877
    assert r["grpc_response_wait_us"] == 11660


def test_parse_csv_rejects_empty() -> None:
    with pytest.raises(ValueError):
        pa_output.parse_csv(CSV_TEXT.splitlines()[0] + "\n")


def test_parse_stdout_client_server_and_composing() -> None:
    out = pa_output.parse_stdout(STDOUT_TEXT)
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
    p = pa_output.parse_profile_export(json.dumps({"experiments": [{"experiment": {}, "requests": reqs, "window_boundaries": [0, 2]}]}))
    assert p["requests"] == 101
    assert p["seconds"] == pytest.approx(1.008)
    assert p["throughput"] == pytest.approx(101 / 1.008)
    assert p["p50_ms"] == pytest.approx(8.0) and p["p99_ms"] == pytest.approx(8.0)

"""RELIABILITY 4, 18, 20 and issue 15 items 5 and 8, through the chart's Envoy front proxy run for
real in front of a supervised server (the BLS engine, so the towers are loaded and reachable
behind it): bodies above the limit are refused before they are read in full, stalled bodies are
cut, deep JSON never reaches Triton (one such body crashes 2.51), malformed JSON is 400, the admin
APIs and the internal models never pass, and other clients' traffic keeps succeeding throughout."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from freshrec.client import FreshrecClient, InvalidArgument
from tests.faults.proxy import Proxy
from tests.faults.traffic import Load

LIMIT = 8 << 20  # values.yaml proxy.maxRequestBytes


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def raw_http(port: int, head: bytes, chunks, timeout: float) -> tuple[bytes, int, float]:
    """Send a request by hand; return (status line, bytes of body sent, seconds to the answer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    started = time.monotonic()
    sent = 0
    try:
        s.sendall(head)
        for chunk in chunks:
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the proxy answered and closed while we were still sending: what we want
    try:
        answer = s.recv(65536)
    except (TimeoutError, ConnectionResetError):
        answer = b""
    s.close()
    return answer.split(b"\r\n", 1)[0], sent, time.monotonic() - started


def post(port: int, path: str, body: bytes | str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


@pytest.fixture
def behind_proxy(supervised, tmp_path: Path):
    sup = supervised(engine="bls")
    proxy = Proxy(tmp_path / "proxy", sup.options.http_port, sup.options.grpc_port).start()
    yield sup, proxy
    proxy.stop()


def test_the_proxy_bounds_what_reaches_triton(behind_proxy) -> None:
    sup, proxy = behind_proxy
    triton_pid = sup.server.pid
    # freshrec's client (it retries UNAVAILABLE): the 64 MiB requests below load both cores for a
    # moment, and the queue refuses what it held past 100 ms.
    with Load(proxy.grpc_url, sup.users, threads=2, retrying=True) as load:
        # Ordinary traffic passes, over both protocols.
        with FreshrecClient(proxy.grpc_url) as client:
            assert len(client.recommend(sup.users[0], k=5).item_ids) == 5
        ok = post(proxy.http_port, "/v2/models/recommend/infer",
                  json.dumps({"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": [sup.users[0]]}]}))  # fmt: skip
        assert ok[0] == 200 and json.loads(ok[1])["outputs"]

        # A 64 MiB HTTP body: 413 before it is read in full; Triton never sees it.
        before = rss_mb(triton_pid)
        header = b'{"inputs":[{"name":"user_id","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}]}' % (64 << 20)
        head = (b"POST /v2/models/recommend/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(header), len(header) + (64 << 20))) + header  # fmt: skip
        status, sent, _ = raw_http(proxy.http_port, head, (b"a" * (1 << 20) for _ in range(64)), timeout=30)
        assert status.startswith(b"HTTP/1.1 413"), status
        assert sent < 64 << 20 and rss_mb(triton_pid) - before < 16

        # Content-Length of 100 GiB and one byte sent: cut after the idle timeout (10 s), not held open.
        head = b"POST /v2/models/recommend/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (100 << 30)
        status, _, took = raw_http(proxy.http_port, head, [b"{"], timeout=30)
        assert status.startswith(b"HTTP/1.1 408") and took < 13, (status, took)

        # A unary gRPC message above the limit: RESOURCE_EXHAUSTED with a text the client maps to
        # InvalidArgument (retrying cannot help), Triton's memory unchanged.
        before = rss_mb(triton_pid)
        with FreshrecClient(proxy.grpc_url, timeout_s=60) as client, pytest.raises(InvalidArgument) as too_big:
            client.recommend("x" * (64 << 20))
        assert too_big.value.code == "RESOURCE_EXHAUSTED" and f"limit of {LIMIT} bytes" in too_big.value.message
        assert rss_mb(triton_pid) - before < 16

        # JSON nested a million deep crashes Triton 2.51 (recursive parser); the proxy refuses it.
        for depth in (33, 1_000_000):
            status, body = post(proxy.http_port, "/v2/models/recommend/infer", "[" * depth + "]" * depth)
            assert status == 400 and b"nested deeper than 32" in body
        # Malformed JSON: Triton says 500, the client hears 400.
        status, body = post(proxy.http_port, "/v2/models/recommend/infer", '{"inputs": [{"name": "user_id"')
        assert status == 400 and b"parse" in body
        assert sup.server.is_alive()

        # Admin APIs never pass, not even with the key.
        status, _ = post(proxy.http_port, "/v2/repository/index", "{}")
        assert status == 403
        with pytest.raises(InferenceServerException) as denied:
            grpcclient.InferenceServerClient(proxy.grpc_url).load_model("recommend", headers=sup.server.admin_grpc_headers)
        assert denied.value.status() == "StatusCode.PERMISSION_DENIED"

        # Internal models: reachable on Triton's loopback port (the pipeline's BLS calls), refused
        # through the proxy over both protocols.
        tower = [grpcclient.InferInput("text_embedding", [1, 384], "FP32"), grpcclient.InferInput("id_index", [1, 1], "INT64")]
        tower[0].set_data_from_numpy(np.ones((1, 384), np.float32))
        tower[1].set_data_from_numpy(np.zeros((1, 1), np.int64))
        assert grpcclient.InferenceServerClient(sup.server.grpc_url).infer("item_tower", tower).as_numpy("item_vector").shape[0] == 1
        with pytest.raises(InferenceServerException) as denied:
            grpcclient.InferenceServerClient(proxy.grpc_url).infer("item_tower", tower)
        assert denied.value.status() == "StatusCode.PERMISSION_DENIED" and "internal" in denied.value.message()
        with pytest.raises(InferenceServerException) as denied:
            grpcclient.InferenceServerClient(proxy.grpc_url).infer("item_tower", tower, compression_algorithm="gzip")
        assert denied.value.status() == "StatusCode.UNIMPLEMENTED"
        http = httpclient.InferenceServerClient(proxy.http_url)
        h_tower = [httpclient.InferInput("text_embedding", [1, 384], "FP32"), httpclient.InferInput("id_index", [1, 1], "INT64")]
        h_tower[0].set_data_from_numpy(np.ones((1, 384), np.float32))
        h_tower[1].set_data_from_numpy(np.zeros((1, 1), np.int64))
        with pytest.raises(InferenceServerException) as denied:
            http.infer("item_tower", h_tower)
        assert denied.value.status() == "403"
        http.close()
        time.sleep(0.5)
    failed = [r for r in load.records if r.code != "OK"]
    assert load.records and not failed, failed[:5]

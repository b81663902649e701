"""`freshrec serve` as a user runs it (issue 15 items 4 and 7, RELIABILITY 18, 20, 22): the
supervised server serves only the public models with the in-process engine, keeps its admin key in
a 0600 file and out of every log, answers health on its own port, and the standard tools work
against it as the README shows (perf_analyzer over gRPC and HTTP without a key)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from freshrec.server_ext.launcher import ADMIN_GRPC_HEADER, ADMIN_HEADER, find_free_ports
from freshrec.server_ext.supervisor import admin_key_from_file
from tests.triton_calls import recommend, users_of


def test_admin_key_file_is_created_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "admin.key"
    key = admin_key_from_file(path)
    assert key.isalnum() and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_key_from_file(path) == key  # a restart keeps the operator's key
    mounted = tmp_path / "secret"
    mounted.write_text("fromASecret42\n")
    assert admin_key_from_file(mounted) == "fromASecret42"
    mounted.write_text("not a; key")
    with pytest.raises(ValueError, match="alphanumeric"):
        admin_key_from_file(mounted)


@pytest.fixture
def freshrec_serve(tiny_build, fresh_state: Path, tmp_path: Path):
    """`freshrec serve` in a subprocess on free ports; yields (process, ports, key file, stdout lines)."""
    grpc_port, http_port, metrics_port, health_port = find_free_ports(4)
    key_file = tmp_path / "admin.key"
    cmd = [sys.executable, "-m", "freshrec.cli", "serve", "--repository", str(tiny_build["repositories"]["embedded"]),
           "--state", f"sqlite:///{fresh_state}", f"--grpc-port={grpc_port}", f"--http-port={http_port}",
           f"--metrics-port={metrics_port}", f"--health-port={health_port}", "--admin-key-file", str(key_file)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "FRESHREC_ENGINE": ""}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("metrics") or proc.poll() is not None:
            break
    ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port, "health": health_port}
    assert lines and lines[-1].startswith("metrics"), "".join(lines)
    try:
        yield proc, ports, key_file, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_freshrec_serve_end_to_end(freshrec_serve, fresh_state: Path, tmp_path: Path) -> None:
    from freshrec.offline.benchmarks.perf_analyzer import perf_analyzer_command

    proc, ports, key_file, lines = freshrec_serve
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f"admin key: in {key_file}" in "".join(lines) and key not in "".join(lines)
    assert "models  recommend ingest_events upsert_items forget_user\n" in lines  # in-process engine: no towers
    grpc_url, http_url = f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['http']}"
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['health']}/ready", timeout=5) as r:
        assert r.status == 200 and json.load(r) == {"live": True, "ready": True, "reason": ""}

    grpc = grpcclient.InferenceServerClient(grpc_url)
    http = httpclient.InferenceServerClient(http_url)
    try:
        user = users_of(fresh_state, 1)[0]
        assert len(recommend(grpc, user, k=5)[0]) == 5
        for tower in ("user_tower", "item_tower", "text_encoder", "reranker"):  # unreachable, and no way to load them without the key
            with pytest.raises(InferenceServerException, match="unknown model") as info:
                grpc.infer(tower, [])
            assert info.value.status() == "StatusCode.NOT_FOUND"
            with pytest.raises(InferenceServerException, match="restricted"):
                grpc.load_model(tower)
        grpc.load_model("recommend", headers={ADMIN_GRPC_HEADER: key})  # the key from the file works
        http.load_model("recommend", headers={ADMIN_HEADER: key})

        # perf_analyzer as the README shows it: no header, over gRPC and HTTP (it reads the model
        # config and the statistics, which are open).
        data = tmp_path / "recommend.json"
        data.write_text(json.dumps({"data": [{"user_id": [user]}, {"user_id": ["someone-new"]}]}))
        for protocol, url in (("grpc", grpc_url), ("http", http_url)):
            pa = subprocess.run([*perf_analyzer_command(), "-m", "recommend", "-i", protocol, "-u", url, "--input-data", str(data),
                                 "--concurrency-range", "2", "--request-count", "100", "--percentile=99"],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
            assert pa.returncode == 0, pa.stdout[-2000:] + pa.stderr[-2000:]
            assert "Throughput:" in pa.stdout
    finally:
        grpc.close()
        http.close()

    log_path = Path(next(l for l in lines if l.startswith("tritonserver log:")).split(":", 1)[1].strip())
    assert key not in log_path.read_text()
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=40)
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 10 and key not in out

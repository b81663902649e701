"""The tritonserver launcher against the real Triton 2.51 binary from nvidia-pytriton (CPU only)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from freshrec.server_ext.launcher import (
    ADMIN_GRPC_HEADER,
    ADMIN_HEADER,
    ServerOptions,
    ServerStartError,
    TritonServer,
    find_free_ports,
    is_prepared_tree,
    prepare_server,
    server_env,
)
from tritonclient.utils import InferenceServerException

Factory = Callable[..., TritonServer]

# The stub imports model.py with the virtualenv's python: only numpy and the backend utils here.
MODEL_PY = textwrap.dedent(
    '''
    import json
    import time

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            params = json.loads(args["model_config"]).get("parameters", {})
            if "fail" in params:
                raise RuntimeError(params["fail"]["string_value"])
            self.delay_s = float(params.get("delay_s", {}).get("string_value", "0"))

        def execute(self, requests):
            time.sleep(self.delay_s)
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    '''
)


def write_add_one(repo: Path, name: str = "add_one", **params: str) -> Path:
    """An FP32 ``OUTPUT0 = INPUT0 + 1`` Python-backend model; ``params`` go to config parameters."""
    (repo / name / "1").mkdir(parents=True)
    parameters = "".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    (repo / name / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""\
            name: "{name}"
            backend: "python"
            max_batch_size: 8
            input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
            output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
            """
        )
        + parameters
    )
    (repo / name / "1" / "model.py").write_text(MODEL_PY)
    return repo


def grpc_add_one(url: str, x: np.ndarray, model: str = "add_one") -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp], client_timeout=30).as_numpy("OUTPUT0")
    finally:
        client.close()


X = np.array([[1.0, 2.5, -3.0]], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Without a server
# --------------------------------------------------------------------------------------------


def test_prepare_server_is_reused_and_safe_under_concurrency(tmp_path: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        roots = list(pool.map(lambda _: prepare_server(tmp_path), range(4)))
    assert len(set(roots)) == 1
    root = roots[0]
    assert root.parent == tmp_path
    assert root.name.startswith("tritonserver-") and root.name.endswith(f"-py{sys.version_info[0]}.{sys.version_info[1]}")
    stub = root / "backends" / "python" / "triton_python_backend_stub"
    assert os.access(stub, os.X_OK) and os.access(root / "bin" / "tritonserver", os.X_OK)
    assert not (root / "python_backend_stubs").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    mtime = stub.stat().st_mtime_ns
    assert prepare_server(tmp_path) == root and stub.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_a_moved_prepared_tree_still_runs_on_the_wheels_libraries(tmp_path: Path) -> None:
    """The cpu image moves the prepared tree to /opt/tritonserver (the chart's --server-root): its
    binaries' RPATH no longer reaches the wheel's libraries, so the launcher must add them; an
    installation of its own (the NGC image's) must never get them."""
    moved = tmp_path / "opt-tritonserver"
    prepare_server(tmp_path / "cache").rename(moved)
    assert is_prepared_tree(moved) and not is_prepared_tree(tmp_path)
    libs = server_env(embedded=is_prepared_tree(moved))["LD_LIBRARY_PATH"].split(os.pathsep)
    assert any(p.endswith("nvidia_pytriton.libs") for p in libs)
    ldd = subprocess.run(["ldd", str(moved / "bin" / "tritonserver")], capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(libs)})  # fmt: skip
    assert "not found" not in ldd.stdout, ldd.stdout
    assert not any(p.endswith("nvidia_pytriton.libs") for p in server_env(embedded=False)["LD_LIBRARY_PATH"].split(os.pathsep))


def test_options_defaults_are_safe_and_validated(tmp_path: Path) -> None:
    opts = ServerOptions(tmp_path)
    args = opts.to_args(Path("/srv"), server_id="x", shm_prefix="p")
    for flag in (
        "--grpc-address=127.0.0.1",
        "--http-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--model-control-mode=none",
        "--strict-readiness=false",
        "--disable-auto-complete-config",
        "--exit-timeout-secs=30",
        "--backend-directory=/srv/backends",
        "--cache-directory=/srv/caches",
    ):
        assert flag in args
    rule = f"model-repository,shared-memory,trace,logging:{ADMIN_HEADER}={opts.admin_key}"
    assert f"--grpc-restricted-protocol={rule}" in args and f"--http-restricted-api={rule}" in args
    assert opts.admin_key not in repr(opts)
    assert ServerOptions(tmp_path).admin_key != opts.admin_key
    with pytest.raises(ValueError):
        ServerOptions(tmp_path, model_control_mode="poll")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ServerOptions(tmp_path, grpc_port=9000, http_port=9000)
    with pytest.raises(ValueError):
        ServerOptions(tmp_path, restricted_apis=("everything",))


def test_find_free_ports_are_distinct_and_bindable() -> None:
    ports = find_free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------------------------
# Real server
# --------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_add_one_over_grpc_and_http(tmp_path: Path, triton_server_factory: Factory) -> None:
    server = triton_server_factory(write_add_one(tmp_path / "repo"))

    np.testing.assert_array_equal(grpc_add_one(server.grpc_url, X), X + 1)

    http = httpclient.InferenceServerClient(server.http_url)
    try:
        inp = httpclient.InferInput("INPUT0", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=True)
        np.testing.assert_array_equal(http.infer("add_one", [inp]).as_numpy("OUTPUT0"), X + 1)
        assert http.is_model_ready("add_one")
    finally:
        http.close()

    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        assert 'nv_inference_request_success{model="add_one",version="1"} 2' in resp.read().decode()


def _listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state owned by ``pids``, from /proc."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints the address as native-endian 32-bit words.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(socket.inet_ntop(family, raw))
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # gRPC's dual-stack socket
                ip = ip.ipv4_mapped
            found.add((str(ip), int(hex_port, 16)))
    return found


def _non_loopback_ip() -> str | None:
    """This host's outward IPv4 address, if it has one (UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if ipaddress.ip_address(ip).is_loopback else ip


@pytest.mark.integration
def test_listens_only_on_loopback_by_default(tmp_path: Path, triton_server_factory: Factory) -> None:
    server = triton_server_factory(write_add_one(tmp_path / "repo"))
    listening = _listening_addresses(server.group_pids())
    opts = server.options
    assert {port for _, port in listening} >= {opts.grpc_port, opts.http_port, opts.metrics_port}
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    outward = _non_loopback_ip()
    if outward is not None:
        for port in (opts.grpc_port, opts.http_port, opts.metrics_port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((outward, port), timeout=2).close()


@pytest.mark.integration
def test_repository_api_needs_the_admin_key_and_read_only_apis_do_not(tmp_path: Path, triton_server_factory: Factory) -> None:
    server = triton_server_factory(write_add_one(tmp_path / "repo"))

    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        with pytest.raises(InferenceServerException) as refused:
            grpc.get_model_repository_index()
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert "restricted" in refused.value.message() and server.admin_key not in refused.value.message()
        with pytest.raises(InferenceServerException) as refused:
            http.get_model_repository_index()
        assert refused.value.status() == "403"
        # Wrong key: still refused.
        with pytest.raises(InferenceServerException):
            grpc.get_model_repository_index(headers={ADMIN_GRPC_HEADER: "0" * 32})

        index = grpc.get_model_repository_index(headers=server.admin_grpc_headers)
        assert [m.name for m in index.models] == ["add_one"]
        assert http.get_model_repository_index(headers=server.admin_http_headers)[0]["name"] == "add_one"
        # Control mode "none": even the admin cannot unload.
        with pytest.raises(InferenceServerException, match="explicit"):
            grpc.unload_model("add_one", headers=server.admin_grpc_headers)
        # Read-only: config and statistics are open (perf_analyzer and tritonclient read them,
        # RELIABILITY 22); the config holds no path.
        config = grpc.get_model_config("add_one").config
        assert config.name == "add_one" and "/" not in str(config)
        assert http.get_inference_statistics("add_one")["model_stats"][0]["name"] == "add_one"
        assert grpc.is_model_ready("add_one")  # health/metadata/inference stay open
    finally:
        grpc.close()
        http.close()


@pytest.mark.integration
def test_explicit_mode_unload_needs_the_admin_key(tmp_path: Path, triton_server_factory: Factory) -> None:
    server = triton_server_factory(write_add_one(tmp_path / "repo"), model_control_mode="explicit")
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            grpc.unload_model("add_one")
        assert grpc.is_model_ready("add_one")
        grpc.unload_model("add_one", headers=server.admin_grpc_headers)
        deadline = time.monotonic() + 30
        while grpc.is_model_ready("add_one") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not grpc.is_model_ready("add_one")
    finally:
        grpc.close()


@pytest.mark.integration
def test_sigterm_drains_in_flight_request_within_exit_timeout(tmp_path: Path, triton_server_factory: Factory) -> None:
    exit_timeout_s = 5
    server = triton_server_factory(write_add_one(tmp_path / "repo", delay_s="1.5"), exit_timeout_s=exit_timeout_s)
    result: dict[str, object] = {}

    def request() -> None:
        try:
            result["y"] = grpc_add_one(server.grpc_url, X)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    worker = threading.Thread(target=request)
    worker.start()
    time.sleep(0.5)  # the request is now inside execute()
    started = time.monotonic()
    returncode = server.stop()  # SIGTERM
    elapsed = time.monotonic() - started
    worker.join(10)

    assert "error" not in result, result
    np.testing.assert_array_equal(result["y"], X + 1)
    assert returncode == 0, server.log_tail()
    assert elapsed < exit_timeout_s + 2, f"stop took {elapsed:.1f}s"
    assert not server.is_alive() and server.group_pids() == []
    assert "Signal (15) received" in server.log_path.read_text()


@pytest.mark.integration
def test_kill_takes_stubs_and_shared_memory_with_it(tmp_path: Path, triton_server_factory: Factory) -> None:
    server = triton_server_factory(write_add_one(tmp_path / "repo"))
    assert len(server.group_pids()) >= 2  # server + one stub
    assert list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    server.kill()
    assert server.returncode == -9
    assert server.group_pids() == []
    assert list(Path("/dev/shm").glob(f"{server.shm_prefix}*")) == []


def _write_bad_config(repo: Path) -> None:
    write_add_one(repo)
    (repo / "add_one" / "config.pbtxt").write_text('name: "add_one"\nbackend: "python"\ninput [ { name: ')


@pytest.mark.integration
@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda repo: write_add_one(repo, fail="boom-in-initialize"), "boom-in-initialize"),
        (_write_bad_config, "add_one"),
    ],
    ids=["initialize-raises", "bad-config-pbtxt"],
)
def test_broken_repository_fails_fast_with_log_tail(
    tmp_path: Path, triton_server_factory: Factory, breakage: Callable[[Path], object], expected: str
) -> None:
    repo = tmp_path / "repo"
    breakage(repo)
    server = triton_server_factory(repo, wait=False)
    started = time.monotonic()
    with pytest.raises(ServerStartError) as failed:
        server.wait_ready(timeout=120)
    assert time.monotonic() - started < 30
    assert failed.value.returncode not in (0, None)
    assert expected in failed.value.log_tail
    assert server.group_pids() == []


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_forever_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    grpc_port, http_port, metrics_port, health_port = find_free_ports(4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    cli = subprocess.Popen(  # `freshrec serve`, on a repository of its own (any Triton repository serves)
        [sys.executable, "-m", "freshrec.cli", "serve", "--repository", str(write_add_one(tmp_path / "repo")),
         f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}",
         f"--health-port={health_port}", "--exit-timeout-s=5"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert cli.stdout is not None
        lines = []
        for line in cli.stdout:
            lines.append(line)
            if line.startswith("metrics"):
                break
        assert f"grpc    127.0.0.1:{grpc_port}\n" in lines, lines
        assert "models  add_one\n" in lines, lines
        np.testing.assert_array_equal(grpc_add_one(f"127.0.0.1:{grpc_port}", X), X + 1)
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/ready", timeout=5) as ready:
            assert ready.status == 200
        cli.send_signal(sig)
        assert cli.wait(timeout=20) == 0, cli.stdout.read()
        for port in (http_port, health_port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()

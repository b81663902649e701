"""Shared fixtures. Integration tests start a real tritonserver through ``triton_server_factory``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from freshrec.server_ext.launcher import TritonServer

_SERVERS = pytest.StashKey[list["TritonServer"]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts a server is an integration test, whether or not it says so."""
    for item in items:
        if {"triton_server_factory", "supervised"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach each server's log tail to the report (shown with the traceback)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            report.sections.append((f"tritonserver log tail ({server.log_path})", server.log_tail()))


@pytest.fixture
def show_log_on_failure(request: pytest.FixtureRequest) -> Callable[[Any], None]:
    """``show_log_on_failure(server)``: on failure, the report shows ``server.log_tail()`` (for a
    server the factory below did not start, e.g. one inside the serving image)."""
    return lambda server: request.node.stash.setdefault(_SERVERS, []).append(server)


@pytest.fixture
def triton_server_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., TritonServer]]:
    """Factory: ``triton_server_factory(model_repository, env=None, wait=True, **options)``.

    Starts a server on free loopback ports (retrying if a port was taken meanwhile), waits until
    it is ready (the test fails with the log tail if the process dies), and stops every server it
    started at teardown. ``options`` are ``ServerOptions`` fields; ``wait=False`` returns the
    started server without waiting, for tests of startup failures.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("the tritonserver binary from nvidia-pytriton runs on Linux only")
    from freshrec.server_ext.launcher import ServerOptions, ServerStartError, TritonServer, start_on_free_ports

    started: list[TritonServer] = []
    request.node.stash[_SERVERS] = started

    def factory(
        model_repository: Path,
        *,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        ready_timeout: float = 120.0,
        **options: Any,
    ) -> TritonServer:
        work = tmp_path_factory.mktemp("tritonserver")
        if any(name in options for name in ("grpc_port", "http_port", "metrics_port")):
            server = TritonServer(ServerOptions(model_repository=Path(model_repository), env=dict(env or {}), **options), work_dir=work)
            started.append(server)
            server.start()
            if wait:
                try:
                    server.wait_ready(ready_timeout)
                except ServerStartError as exc:
                    pytest.fail(str(exc), pytrace=False)
            return server
        try:
            server = start_on_free_ports(model_repository, env=env, work_dir=work, ready_timeout=ready_timeout, wait=wait, **options)
        except ServerStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


# -- one tiny real build shared by the session: real ML-100K subset, real MiniLM, tiny models ----
TINY_USERS = 40


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs `freshrec build` with tiny models on 40 MovieLens users (about a minute on 2 cores).

    Returns the build report plus `build_dir`; the repositories live beside it.
    """
    from freshrec.config import ModelConfig
    from freshrec.training.build import BuildOptions, build

    root = tmp_path_factory.mktemp("tiny_build")
    report = build(BuildOptions(out=root / "build", repository=root / "repo", max_users=TINY_USERS), ModelConfig.tiny())
    report["build_dir"] = root / "build"
    return report


@pytest.fixture
def fresh_state(tiny_build: dict[str, Any], tmp_path: Path) -> Path:
    """A private copy of the tiny build's state store, so a test's writes stay its own."""
    from freshrec.store.sqlite import copy_sqlite

    copy_sqlite(tiny_build["build_dir"] / "state.db", tmp_path / "state.db")
    return tmp_path / "state.db"


@pytest.fixture
def served(tiny_build: dict[str, Any], fresh_state: Path, triton_server_factory):
    """A real tritonserver on the tiny build's embedded repository over a private state copy."""
    server = triton_server_factory(Path(tiny_build["repositories"]["embedded"]), env={"FRESHREC_STATE": f"sqlite:///{fresh_state}"})
    server.state_path = fresh_state
    return server


# -- a real redis-server per test (the Redis state store) ----------------------------------------
class RedisServer:
    """A redis-server on a free loopback port, durable like production (AOF, fsync always)."""

    def __init__(self, data_dir: Path) -> None:
        from freshrec.server_ext.launcher import find_free_ports

        self.dir = data_dir
        self.port = find_free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Any = None

    def start(self, timeout: float = 10.0) -> None:
        import socket
        import subprocess
        import time

        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--protected-mode", "yes", "--logfile", ""],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server not ready in {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what was fsynced to the AOF survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Starts again on the same port and data directory (replays the AOF)."""
        self.kill()
        self.start()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (`.url`, `.kill()`, `.restart()`), killed at teardown."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `make redis-server-bin` (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


# -- a real Redis Cluster: 3 primaries + 3 replicas of redis-server on loopback -----------------
def _cluster_ports(n: int) -> list[int]:
    """Free loopback ports P whose cluster bus port P + 10000 is free too (so P <= 55535)."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 55535)
        if port not in ports and port + 10000 not in ports and free(port) and free(port + 10000):
            ports.append(port)
    return ports


class RedisClusterServers:
    """Six `redis-server --cluster-enabled yes` on free loopback ports, durable like production
    (AOF, fsync always), joined by `redis-cli --cluster create --cluster-replicas 1`. A replica
    takes over 1 s after its primary stops answering (`cluster-node-timeout 1000`)."""

    def __init__(self, data_dir: Path, nodes: int = 6) -> None:
        self.dir = data_dir
        self.ports = _cluster_ports(nodes)
        self.procs: dict[int, Any] = {}
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start_node(self, port: int) -> None:
        import subprocess

        work = self.dir / str(port)
        work.mkdir(exist_ok=True)
        log = open(work / "redis.log", "ab")
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work), "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "1000", "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--repl-diskless-sync-delay", "0", "--daemonize", "no",
             "--protected-mode", "yes", "--logfile", ""],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def cli(self, port: int, *args: str, timeout: float = 30.0) -> str:
        import subprocess

        out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
        return out.stdout + out.stderr

    def start(self, timeout: float = 30.0) -> None:
        import time

        for port in self.ports:
            self.start_node(port)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while "PONG" not in self.cli(port, "ping"):
                if time.monotonic() > deadline or self.procs[port].poll() is not None:
                    raise RuntimeError(f"redis-server {port} not ready: {self.log_tail(port)}")
                time.sleep(0.05)
        created = self.cli(self.ports[0], "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                           "--cluster-replicas", "1", "--cluster-yes")  # fmt: skip
        if "[OK] All 16384 slots covered" not in created:
            raise RuntimeError(f"redis-cli --cluster create failed: {created[-2000:]}")
        self.wait_healthy(deadline)

    def primaries(self) -> list[int]:
        """Ports of the nodes that are primaries now (with slots)."""
        return [p for p in self.ports if p in self.procs and self.procs[p].poll() is None and "role:master" in self.cli(p, "info", "replication")]

    def wait_healthy(self, deadline: float) -> None:
        """Every live node sees the cluster ok, and every primary has a replica in sync."""
        import time

        while True:
            live = [p for p in self.ports if self.procs[p].poll() is None]
            ok = all("cluster_state:ok" in self.cli(p, "cluster", "info") for p in live)
            if ok:
                masters = [self.cli(p, "info", "replication") for p in live]
                ok = sum("role:master" in m for m in masters) == 3 and all(
                    "state=online" in m for m in masters if "role:master" in m)  # fmt: skip
            if ok:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster not healthy: " + self.cli(live[0], "cluster", "nodes"))
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown save; only what was fsynced to its AOF survives."""
        proc = self.procs[port]
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def log_tail(self, port: int) -> str:
        path = self.dir / str(port) / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


def _start_cluster(tmp_path_factory: pytest.TempPathFactory) -> RedisClusterServers:
    import shutil

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server is not installed: `make redis-server-bin` (apt-get install redis-server)")
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """One Redis Cluster for the session; tests that share it take their own key prefix
    (`redis_cluster_url`). Tests that kill nodes use `private_redis_cluster`."""
    cluster = _start_cluster(tmp_path_factory)
    yield cluster
    cluster.stop()


_CLUSTER_PREFIXES = iter(range(1_000_000))


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The session cluster's URL with a key prefix of this test's own."""
    return f"{redis_cluster.url}?prefix=t{next(_CLUSTER_PREFIXES)}:&lease=0.3"


@pytest.fixture
def private_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test alone (`.kill(port)`, `.primaries()`), stopped at teardown."""
    cluster = _start_cluster(tmp_path_factory)
    yield cluster
    cluster.stop()

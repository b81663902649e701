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

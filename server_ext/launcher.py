"""Start and stop the real ``tritonserver`` (Triton 2.51) that ships inside the nvidia-pytriton wheel.

Why this module exists instead of ``pytriton.triton.Triton``: PyTriton binds models to Python
callables through its own proxy; freshrec serves a plain model repository (config.pbtxt + Python
backend models), so it only needs the binary, started the way PyTriton starts it:

* the server tree is copied out of site-packages (never written in place) and the Python-backend
  stub for the running interpreter is put at ``backends/python/triton_python_backend_stub``;
* ``LD_LIBRARY_PATH`` holds the wheel's ``nvidia_pytriton.libs`` (and the interpreter's own
  ``libpython3.X.so.1.0`` when it has one, since the stub links libpython);
* ``PATH`` starts with this virtualenv's ``bin/`` so the stub imports numpy etc. from it.

Safe defaults (RELIABILITY.md items 17-19, 22): every endpoint binds to loopback, the model
control API is off (``--model-control-mode=none``), the repository/shared-memory/trace/logging
APIs need an admin header (model config and statistics stay open: they are read-only, hold no
paths, and perf_analyzer and tritonclient need them), and SIGTERM drains in-flight requests for
at most ``exit_timeout_s`` seconds. Readiness is not strict (``--strict-readiness=false``): a
failed load of a new version must not turn the whole server unready while the old one serves;
whether the server serves is the readiness of its models, which ``freshrec serve``'s supervisor
(``server_ext/supervisor.py``) combines with what Triton 2.51 cannot see (a dead stub).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ADMIN_GRPC_HEADER",
    "ADMIN_HEADER",
    "ALL_RESTRICTABLE_APIS",
    "DEFAULT_RESTRICTED_APIS",
    "ServerOptions",
    "ServerStartError",
    "TritonServer",
    "find_free_ports",
    "is_prepared_tree",
    "prepare_server",
    "server_env",
    "start_on_free_ports",
]

#: HTTP header that unlocks the restricted APIs. Over gRPC Triton 2.51 expects the metadata key
#: ``triton-grpc-protocol-<ADMIN_HEADER>`` (``ADMIN_GRPC_HEADER``); both carry the same key.
ADMIN_HEADER = "freshrec-admin"
ADMIN_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"

#: APIs that load code, map memory, write files or change the server (RELIABILITY 18): they
#: require the admin header. ``model-config`` and ``statistics`` are not among them: they are
#: read-only, the generated configs hold no paths and statistics are counts and times, and
#: perf_analyzer reads both (RELIABILITY 22).
DEFAULT_RESTRICTED_APIS: tuple[str, ...] = (
    "model-repository",
    "shared-memory",
    "trace",
    "logging",
)

#: What Triton 2.51 accepts in --grpc-restricted-protocol / --http-restricted-api.
ALL_RESTRICTABLE_APIS: frozenset[str] = frozenset(
    DEFAULT_RESTRICTED_APIS + ("model-config", "statistics", "health", "metadata", "inference")
)

_LOG_TAIL_LINES = 60
_READY_MARKER = ".freshrec-ready.json"


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; carries the log tail for the report."""

    def __init__(self, message: str, *, log_tail: str = "", returncode: int | None = None) -> None:
        super().__init__(f"{message}\n--- last {_LOG_TAIL_LINES} lines of tritonserver log ---\n{log_tail}")
        self.log_tail = log_tail
        self.returncode = returncode


# --------------------------------------------------------------------------------------------
# Server tree
# --------------------------------------------------------------------------------------------


def _pytriton_dir() -> Path:
    """Locate the installed ``pytriton`` package without importing it (its import is heavy)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed; it provides the tritonserver binary")
    return Path(next(iter(spec.submodule_search_locations)))


def _libs_dir() -> Path:
    """The wheel's vendored shared libraries (``auditwheel`` puts them beside the package)."""
    return _pytriton_dir().parent / "nvidia_pytriton.libs"


def _cache_root(cache_dir: Path | None) -> Path:
    from freshrec.assets import cache_root

    return Path(cache_dir) if cache_dir is not None else cache_root()


def prepare_server(cache_dir: Path | None = None) -> Path:
    """Return a ready-to-run copy of the wheel's server tree, building it on first use.

    The tree lives in ``<cache>/tritonserver-<pytriton version>-py<X.Y>/`` (cache: ``cache_dir``,
    else ``$FRESHREC_CACHE``, else ``~/.cache/freshrec``). It is built in a temporary sibling and
    renamed into place under a file lock, so concurrent callers (pytest-xdist workers, replicas)
    never see a half-copied tree, and a crash mid-copy leaves only a temporary folder behind.
    """
    version = importlib.metadata.version("nvidia-pytriton")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = _cache_root(cache_dir)
    target = root / f"tritonserver-{version}-py{py}"
    if (target / _READY_MARKER).is_file():
        return target

    source = _pytriton_dir() / "tritonserver"
    stub = source / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (source / "python_backend_stubs").iterdir())
        raise RuntimeError(f"nvidia-pytriton {version} has no Python-backend stub for Python {py} (has: {have})")

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _READY_MARKER).is_file():  # another process finished while we waited
            return target
        for stale in root.glob(f".tmp-{target.name}-*"):  # left by a crashed earlier attempt
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # incomplete tree without marker: rebuild it
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=root))
        tree = tmp / "tree"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
        for dirpath, _dirs, _files in os.walk(tree):  # site-packages may be read-only
            os.chmod(dirpath, os.stat(dirpath).st_mode | 0o700)
        shutil.copy2(stub, tree / "backends" / "python" / "triton_python_backend_stub")
        marker = {"pytriton": version, "python": py, "source": str(source)}
        (tree / _READY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        os.rename(tree, target)
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_prepared_tree(server_root: Path) -> bool:
    """True for a tree made by ``prepare_server`` (wherever it was moved, e.g. the cpu image's
    /opt/tritonserver): it runs on the wheel's libraries, which its binaries' RPATH no longer
    reaches once moved out of site-packages."""
    return (Path(server_root) / _READY_MARKER).is_file()


def server_env(extra: Mapping[str, str] | None = None, *, embedded: bool = True) -> dict[str, str]:
    """Environment for ``tritonserver`` and its Python-backend stubs (see module docstring).
    ``embedded=False`` for a server installed elsewhere (the NGC image's /opt/tritonserver): its
    own libraries, never the wheel's."""
    env = dict(os.environ)
    libs = [str(_libs_dir())] if embedded else []
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    base_lib = Path(sys.base_prefix) / "lib"
    if (base_lib / f"libpython{py}.so.1.0").exists():  # e.g. pyenv; Debian may lack libpython3.X
        libs.append(str(base_lib))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    scripts = sysconfig.get_path("scripts")  # this virtualenv's bin/: the stub's python3 and packages
    env["PATH"] = os.pathsep.join(p for p in (scripts, env.get("PATH", "")) if p)
    # The model repository is build output and may be mounted read-only: no __pycache__ in it.
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerOptions:
    """How to run one server. Defaults are the safe ones (loopback, no model control API).

    ``model_control_mode="none"`` loads every model at start and refuses load/unload;
    ``"explicit"`` loads ``startup_models`` at start and allows load/unload with the admin key.
    ``admin_key`` is random per options object; send ``admin_http_headers`` /
    ``admin_grpc_headers`` to use the ``restricted_apis`` (an empty tuple turns the restriction off).
    """

    model_repository: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    metrics_host: str | None = None  # None: ``host``; the chart opens the metrics port to Prometheus only
    model_control_mode: Literal["none", "explicit"] = "none"
    exit_timeout_s: int = 30
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    startup_models: tuple[str, ...] = ("*",)
    restricted_apis: tuple[str, ...] = DEFAULT_RESTRICTED_APIS
    admin_key: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_repository", Path(self.model_repository).resolve())  # the server runs in its own work dir
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        object.__setattr__(self, "startup_models", tuple(self.startup_models))
        object.__setattr__(self, "restricted_apis", tuple(self.restricted_apis))
        if self.model_control_mode not in ("none", "explicit"):
            raise ValueError(f"model_control_mode must be 'none' or 'explicit', not {self.model_control_mode!r}")
        ports = (self.grpc_port, self.http_port, self.metrics_port)
        if any(not 0 < p < 65536 for p in ports) or len(set(ports)) != 3:
            raise ValueError(f"need three distinct ports in 1..65535, got {ports}")
        if self.exit_timeout_s < 0:
            raise ValueError("exit_timeout_s must be >= 0")
        unknown = set(self.restricted_apis) - ALL_RESTRICTABLE_APIS
        if unknown:
            raise ValueError(f"unknown restricted APIs {sorted(unknown)}; allowed: {sorted(ALL_RESTRICTABLE_APIS)}")
        if self.restricted_apis and not self.admin_key.isalnum():
            raise ValueError("admin_key must be alphanumeric (it is embedded in a Triton flag)")

    @property
    def admin_http_headers(self) -> dict[str, str]:
        """``headers=`` for ``tritonclient.http`` calls to restricted APIs."""
        return {ADMIN_HEADER: self.admin_key}

    @property
    def admin_grpc_headers(self) -> dict[str, str]:
        """``headers=`` (gRPC metadata) for ``tritonclient.grpc`` calls to restricted APIs."""
        return {ADMIN_GRPC_HEADER: self.admin_key}

    def to_args(self, server_root: Path, *, server_id: str, shm_prefix: str) -> list[str]:
        """Command line for ``tritonserver`` (flags checked against ``tritonserver --help`` 2.51)."""
        args = [
            str(server_root / "bin" / "tritonserver"),
            f"--id={server_id}",
            f"--model-repository={self.model_repository}",
            f"--model-control-mode={self.model_control_mode}",
            "--strict-readiness=false",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.metrics_host or self.host}",
            f"--metrics-port={self.metrics_port}",
            # Both default to off unless cloud env vars are set; they would bind 0.0.0.0.
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            f"--backend-directory={server_root / 'backends'}",
            f"--cache-directory={server_root / 'caches'}",
            # A unique prefix keeps concurrent servers' shared memory apart and lets kill() clean it.
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        ]
        if self.model_control_mode == "explicit":
            args += [f"--load-model={m}" for m in self.startup_models]
        if self.restricted_apis:
            rule = f"{','.join(self.restricted_apis)}:{ADMIN_HEADER}={self.admin_key}"
            args += [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]
        return args + list(self.extra_args)


def find_free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports the OS reports free now (held open together so they differ).

    Another process may still take one before the server binds; callers that start servers in
    parallel should retry on "already in use" (the test fixture does).
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------
# Process
# --------------------------------------------------------------------------------------------

_live: set[TritonServer] = set()  # strong refs: a running server must not be garbage collected
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl  # resolved before fork: the child only makes the call


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@atexit.register
def _kill_leftovers() -> None:
    """A crashing test run must not leave servers holding ports and shared memory."""
    for server in list(_live):
        server.kill()


def _client_host(host: str) -> str:
    """Address to reach a server bound to ``host`` (wildcards mean loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class TritonServer:
    """One ``tritonserver`` process in its own process group (so stubs can be killed with it).

    Not thread-safe: drive one instance from one thread. stdout/stderr go to ``log_path``.
    With ``die_with_parent`` the kernel sends SIGTERM to the server when the *thread* that
    called ``start()`` exits (Linux PR_SET_PDEATHSIG), so start it from a long-lived thread.
    """

    def __init__(
        self,
        options: ServerOptions,
        *,
        work_dir: Path | None = None,
        server_root: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.options = options
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="freshrec-triton-"))
        self.log_path = self.work_dir / "tritonserver.log"
        self._server_root = server_root
        self._die_with_parent = die_with_parent
        self.server_id = f"freshrec-{secrets.token_hex(6)}"
        self.shm_prefix = f"{self.server_id}-shm-"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses (tritonclient takes "host:port" without a scheme) --------------------------
    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc.InferenceServerClient(url=...)``."""
        return f"{_client_host(self.options.host)}:{self.options.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http.InferenceServerClient(url=...)`` (no scheme)."""
        return f"{_client_host(self.options.host)}:{self.options.http_port}"

    @property
    def metrics_url(self) -> str:
        """Full Prometheus scrape URL."""
        return f"http://{_client_host(self.options.metrics_host or self.options.host)}:{self.options.metrics_port}/metrics"

    @property
    def admin_key(self) -> str:
        return self.options.admin_key

    @property
    def admin_http_headers(self) -> dict[str, str]:
        return self.options.admin_http_headers

    @property
    def admin_grpc_headers(self) -> dict[str, str]:
        return self.options.admin_grpc_headers

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Launch the process; returns at once (use ``wait_ready``)."""
        if self._proc is not None:
            raise RuntimeError("server already started; use a new TritonServer to restart")
        if not self.options.model_repository.is_dir():
            raise FileNotFoundError(f"model repository {self.options.model_repository} is not a directory")
        root = self._server_root or prepare_server()
        args = self.options.to_args(root, server_id=self.server_id, shm_prefix=self.shm_prefix)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            shown = " ".join(args).replace(self.options.admin_key, "***")  # the key stays out of logs
            log.write(f"# freshrec launcher: {shown}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                args,
                cwd=self.work_dir,
                env=server_env(self.options.env, embedded=self._server_root is None or is_prepared_tree(root)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )
        _live.add(self)

    def is_alive(self) -> bool:
        """True while the server process runs (an exited one is reaped, with its group)."""
        if self._proc is None or self._proc.returncode is not None:
            return False
        try:
            # WNOWAIT: look without reaping, so the pid (= process group id) cannot be reused
            # before _reap() has swept the group.
            running = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            running = False
        if running:
            return True
        self._reap()
        return False

    def wait_ready(self, timeout: float = 120.0, models: tuple[str, ...] = ()) -> None:
        """Poll ``/v2/health/ready`` until it answers 200 from *this* server, then the metrics port
        and ``/v2/models/<m>/ready`` of each of ``models``.

        Triton starts its metrics service after HTTP reports ready, so a scrape right after
        readiness could be refused; ``wait_ready`` returns once ``/metrics`` answers too.

        Raises ServerStartError with the log tail as soon as the process exits (a broken model
        repository makes Triton exit, ``--exit-on-error``), or after ``timeout`` seconds. The
        server id in ``/v2`` guards against a foreign server that owns the port.
        """
        if self._proc is None:
            raise RuntimeError("start() first")
        base = f"http://{_client_host(self.options.host)}:{self.options.http_port}"
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_alive():
                raise ServerStartError(
                    f"tritonserver exited with code {self.returncode} before it was ready",
                    log_tail=self.log_tail(),
                    returncode=self.returncode,
                )
            if (self._http_ok(f"{base}/v2/health/ready") and self._is_ours(f"{base}/v2") and self._http_ok(self.metrics_url)
                    and all(self._http_ok(f"{base}/v2/models/{m}/ready") for m in models)):  # fmt: skip
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(f"tritonserver not ready after {timeout:.0f}s", log_tail=self.log_tail())
            time.sleep(0.1)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton drains in-flight requests for ``exit_timeout_s``), SIGKILL after ``timeout``.

        Default ``timeout`` is ``exit_timeout_s + 15`` (model unload time). Returns the exit code.
        Seen on 2.51: an idle HTTP keep-alive connection (e.g. an open ``tritonclient.http``
        client) holds the shutdown for the whole exit timeout and the exit code becomes 1
        ("Exit timeout expired"); in-flight requests still complete. Close clients first.
        """
        if self._proc is None:
            return None
        if self.is_alive():
            self._signal(signal.SIGTERM, group=False)  # Triton stops its stubs itself
            deadline = time.monotonic() + (self.options.exit_timeout_s + 15 if timeout is None else timeout)
            while self.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.is_alive():
                self.kill()
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group at once: server and stubs (durability tests)."""
        if self._proc is None or self._proc.returncode is not None:
            return
        self._signal(signal.SIGKILL, group=True)
        while self.is_alive():
            time.sleep(0.01)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def group_pids(self) -> list[int]:
        """Live pids in the server's process group (server and stubs), read from /proc."""
        if self._proc is None:
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self._proc.pid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return pids

    # -- logs -----------------------------------------------------------------------------
    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Last ``lines`` lines of the server log (reads at most the last 256 KiB)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * 1024))
                data = f.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    # -- internals --------------------------------------------------------------------------
    def _signal(self, sig: signal.Signals, *, group: bool) -> None:
        assert self._proc is not None
        try:
            if group:
                os.killpg(self._proc.pid, sig)
            else:
                os.kill(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        """After the leader exited (still a zombie): kill leftover stubs, reap, free shm."""
        assert self._proc is not None
        if self._proc.returncode is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._proc.wait()
        _live.discard(self)
        for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            try:
                leftover.unlink()
            except OSError:
                pass

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _is_ours(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return json.load(resp).get("name") == self.server_id
        except (urllib.error.URLError, OSError, ValueError):
            return False


def start_on_free_ports(
    model_repository: Path,
    *,
    env: Mapping[str, str] | None = None,
    work_dir: Path | None = None,
    ready_timeout: float = 300.0,
    wait: bool = True,
    attempts: int = 3,
    **options: Any,
) -> TritonServer:
    """A server on free loopback ports, started and (with ``wait``) ready: what the demo, the
    evaluation, the benchmarks and the tests run. ``options`` are other ``ServerOptions`` fields.
    A port taken by another process between ``find_free_ports`` and bind costs a new try with
    other ports; any other start failure raises ServerStartError with the log tail."""
    for attempt in range(attempts):
        g, h, m = find_free_ports(3)
        opts = ServerOptions(model_repository=Path(model_repository), grpc_port=g, http_port=h, metrics_port=m,
                             env=dict(env or {}), **options)  # fmt: skip
        server = TritonServer(opts, work_dir=Path(work_dir) / f"try{attempt}" if work_dir and attempt else work_dir)
        server.start()
        if not wait:
            return server
        try:
            server.wait_ready(ready_timeout)
            return server
        except ServerStartError as exc:
            server.stop()
            if "already in use" not in exc.log_tail or attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")

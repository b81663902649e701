"""``freshrec serve``: one tritonserver and what Triton 2.51 lacks around it (RELIABILITY 15, 17, 21).

Triton 2.51's Python backend never replaces a dead stub process and keeps reporting its model
ready; every request routed to it fails after a one-second wait, for as long as the server runs
(the restart is a TODO in python_be.cc; stub-aware model readiness came in r26.01). Its shutdown
answers requests that arrive while it unloads with NOT_FOUND, which clients treat as permanent.
The supervisor runs Triton in explicit model-control mode, holding the admin key itself, and:

* **loads** the served models at start (``models``: with the in-process engine only the public
  ones, so no client reaches the towers);
* **watches the stubs**: a SIGKILLed or crashed stub stays a zombie child of tritonserver (2.51
  reaps a stub only when it finalizes the instance, while the stubs it stops on purpose are reaped
  at once), so a zombie whose command line named a served model's stub, with no live stub of the
  same instance name beside it (a failed load's stubs die next to the serving ones), is a dead
  instance. Readiness turns false at the next scan (``poll_s``);
* **reloads** that model through the repository API: a plain load of an unchanged model is only a
  config update in 2.51 (no new instances), so the load carries the model's own config with one
  parameter changed (``freshrec_restart``), which makes Triton load a new generation beside the
  serving one and swap; the healthy instance serves until the swap. 2.51 never releases the old
  generation (the request that was in flight on the dead stub is never finished), so its
  surviving stubs, which get no requests any more, are killed ``retire_after_s`` later;
* **answers health** on its own port: ``/ready`` is 200 when Triton is up, every served model is
  ready, no stub is dead and no drain has begun; ``/live`` is 200 unless Triton is gone or a model
  has been unhealthy for ``live_grace_s`` (a reload that does not work): then the kubelet restarts
  the container. The Helm chart's probes call these;
* **drains** on SIGTERM: readiness false, then Triton's own shutdown (in-flight requests finish;
  requests arriving meanwhile are still served), and the moment Triton logs that no inference is
  in flight and starts unloading, the whole process group is killed: the ports close and later
  requests get UNAVAILABLE (connection refused) instead of NOT_FOUND. Acknowledged writes are
  already durable (SQLite commit / Redis AOF before the answer), so skipping the models'
  finalize loses nothing; it also skips 2.51's wait for a model with a dead stub, which never ends.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from freshrec.server_ext.launcher import ServerOptions, ServerStartError, TritonServer

__all__ = ["STUB_BINARY", "Health", "Supervisor", "admin_key_from_file", "repository_models", "serve_forever", "stubs_of"]

STUB_BINARY = "triton_python_backend_stub"
#: What Triton 2.51 logs in its shutdown once no model has an inference in flight (server.cc, Stop).
DRAINED_MARKER = b"All models are stopped, unloading models"
RESTART_PARAMETER = "freshrec_restart"


# --------------------------------------------------------------------------------------------
# Stub processes, from /proc
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    instance: str  # e.g. recommend_0_1


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _children(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == ppid:
                out.append(int(entry.name))
    return out


def _stub(pid: int) -> Stub | None:
    """The stub a live process runs, from its command line (2.51: argv[1] is
    ``<repository>/<model>/<version>/model.py``, argv[8] the instance name); None for others."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if len(argv) < 9 or not argv[0].decode(errors="replace").endswith(STUB_BINARY):
        return None
    return Stub(pid, Path(argv[1].decode(errors="replace")).parent.parent.name, argv[8].decode(errors="replace"))


def stubs_of(server_pid: int) -> list[Stub]:
    """The live Python-backend stubs of a tritonserver process."""
    return [s for pid in _children(server_pid) if (_stat(pid) or ("Z",))[0] != "Z" and (s := _stub(pid)) is not None]


# --------------------------------------------------------------------------------------------
# Admin key and models
# --------------------------------------------------------------------------------------------


def admin_key_from_file(path: Path) -> str:
    """The admin key kept in ``path``: read when the file exists (a mounted Secret, a key chosen
    by the operator), else a new random key written there with mode 0600. Never printed."""
    path = Path(path)
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_hex(16)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
    if not key.isalnum():
        raise ValueError(f"the admin key in {path} must be alphanumeric (it is embedded in a Triton flag)")
    return key


def repository_models(repository: Path) -> tuple[str, ...]:
    """Every model folder of a repository (one with a config.pbtxt), sorted."""
    return tuple(sorted(p.parent.name for p in Path(repository).glob("*/config.pbtxt")))


# --------------------------------------------------------------------------------------------
# The supervisor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    live: bool
    ready: bool
    reason: str  # why not ready (or not live); "" when both hold


class Supervisor:
    """One tritonserver in explicit model-control mode serving ``models``, watched (module docstring).

    Args:
        options: the server's options; the control mode and startup models are set here.
        models: the models to load and keep serving (all of them gate readiness).
        health_port: port of the ``/live`` and ``/ready`` endpoint (0: any free one; None: none).
        health_host: its address (default: ``options.host``; the chart opens it to the kubelet).
        poll_s: seconds between scans of the stub processes (a dead stub is seen within this).
        live_grace_s: a model unhealthy (dead stub not recovered, or not ready) this long turns
            ``/live`` false.
        retire_after_s: seconds after a reload before the old generation's surviving stubs are killed.
        log: where the supervisor reports what it does (never the admin key).
    """

    def __init__(
        self,
        options: ServerOptions,
        models: Sequence[str],
        *,
        health_port: int | None = None,
        health_host: str | None = None,
        work_dir: Path | None = None,
        server_root: Path | None = None,
        poll_s: float = 0.2,
        live_grace_s: float = 60.0,
        retire_after_s: float = 10.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not models:
            raise ValueError("the supervisor needs at least one model to serve")
        if not options.restricted_apis or "model-repository" not in options.restricted_apis:
            raise ValueError("the supervisor holds the admin key: the model-repository API must stay restricted")
        self.models = tuple(models)
        self.options = dataclasses.replace(options, model_control_mode="explicit", startup_models=self.models)
        self.server = TritonServer(self.options, work_dir=work_dir, server_root=server_root)
        self.poll_s, self.live_grace_s, self.retire_after_s = poll_s, live_grace_s, retire_after_s
        self._log = log or (lambda msg: print(f"freshrec supervisor: {msg}", file=sys.stderr, flush=True))
        self._health_addr = (health_host or options.host, health_port) if health_port is not None else None
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._known: dict[int, Stub] = {}  # live stubs seen so far, by pid
        self._retired: set[int] = set()  # stubs of swapped-out generations: their death is expected
        self._dead: dict[str, float] = {}  # model -> when a stub of it was found dead (until reloaded)
        self._not_ready: dict[str, float] = {}  # model -> since when Triton calls it not ready
        self._triton_live = True
        self._silent = 0  # health checks in a row that Triton did not answer
        self._restarts = 0
        self.draining = False
        #: (monotonic time, what, detail): "dead", "reloaded", "reload_failed", "retired", "drain", "drained".
        self.events: list[tuple[float, str, str]] = []

    # -- addresses ----------------------------------------------------------------------------
    @property
    def health_url(self) -> str | None:
        """``http://host:port`` of the health endpoint once started."""
        if self._httpd is None:
            return None
        host, port = self._httpd.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, ready_timeout: float = 300.0) -> None:
        """Start Triton, wait until every model is ready, then watch it and serve health."""
        self.server.start()
        try:
            self.server.wait_ready(ready_timeout, models=self.models)
        except BaseException:
            self.server.stop()
            raise
        if self._health_addr is not None:
            self._httpd = _health_server(self, *self._health_addr)
            self._spawn(self._httpd.serve_forever, "freshrec-health")
        self._scan()
        self._spawn(self._watch, "freshrec-supervisor")

    def health(self) -> Health:
        """What ``/live`` and ``/ready`` answer, from the latest scan."""
        now = time.monotonic()
        with self._lock:
            alive = self.server.is_alive()
            dead = sorted(self._dead)
            not_ready = sorted(self._not_ready)
            worst = min([*self._dead.values(), *self._not_ready.values()], default=now)
            live = alive and self._triton_live and now - worst < self.live_grace_s
            if not alive:
                reason = "tritonserver is not running"
            elif self.draining:
                reason = "draining: shutting down"
            elif dead:
                reason = f"a Python-backend stub of {', '.join(dead)} died; reloading"
            elif not_ready:
                reason = f"not ready: {', '.join(not_ready)}"
            elif not self._triton_live:
                reason = "tritonserver does not answer"
            else:
                reason = ""
            if not live and now - worst >= self.live_grace_s:
                reason += f" (unhealthy for more than {self.live_grace_s:.0f} s)"
        return Health(live=live, ready=alive and not reason, reason=reason)

    def drain(self, timeout: float | None = None) -> int | None:
        """Stop serving (module docstring): readiness false, Triton's shutdown, then SIGKILL of the
        process group once nothing is in flight. Waits at most ``timeout`` (default: the exit
        timeout + 15 s) before killing anyway. Returns 0 after a drain, else Triton's exit code."""
        with self._lock:
            self.draining = True
        self.events.append((time.monotonic(), "drain", ""))
        server = self.server
        if not server.is_alive():
            self._shutdown_threads()
            return server.returncode
        offset = server.log_path.stat().st_size if server.log_path.exists() else 0
        os.kill(server.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + (self.options.exit_timeout_s + 15 if timeout is None else timeout)
        drained = False
        with open(server.log_path, "rb") as log:
            log.seek(offset)
            seen = b""
            while server.is_alive() and time.monotonic() < deadline:
                seen = seen[-len(DRAINED_MARKER):] + log.read()
                if DRAINED_MARKER in seen:
                    drained = True
                    break
                time.sleep(0.005)
        server.kill()  # no-op when it already exited
        self.events.append((time.monotonic(), "drained" if drained else "stopped", f"rc={server.returncode}"))
        self._shutdown_threads()
        return 0 if drained else server.returncode

    def stop(self) -> None:
        """Drain if still running, and release the threads and ports."""
        if self.server.is_alive():
            self.drain()
        self._shutdown_threads()

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the watch ----------------------------------------------------------------------------
    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _shutdown_threads(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def _watch(self) -> None:
        next_models = 0.0
        while not self._stop.is_set():
            try:
                self._scan()
                if time.monotonic() >= next_models:
                    self._check_models()
                    next_models = time.monotonic() + 1.0
            except Exception as exc:  # noqa: BLE001 - the watch must outlive one bad scan
                self._log(f"scan failed: {exc!r}")
            self._stop.wait(self.poll_s)

    def _scan(self) -> None:
        """Learn new stubs; report stubs that died (zombies) and start their model's reload."""
        pid0 = self.server.pid
        if pid0 is None or self.draining:
            return
        children = _children(pid0)
        dead: dict[str, list[str]] = {}
        with self._lock:
            zombies = []
            for pid in children:
                st = _stat(pid)
                if st is None:
                    continue
                if pid not in self._known and st[0] != "Z" and (stub := _stub(pid)) is not None:
                    self._known[pid] = stub
                if st[0] == "Z" and pid in self._known and pid not in self._retired:
                    zombies.append(self._known[pid])
            # A stub of a load that failed (a new version, or a reload) dies beside the serving
            # instance of the same name, and 2.51 may leave it a zombie too: only a stub whose
            # instance has no live namesake was serving.
            live = {(s.model, s.instance) for pid, s in self._known.items() if pid not in self._retired and (_stat(pid) or ("Z",))[0] != "Z"}
            for stub in zombies:
                if stub.model in self.models and (stub.model, stub.instance) not in live:
                    dead.setdefault(stub.model, []).append(stub.instance)
                else:
                    self._retired.add(stub.pid)
            for pid in set(self._known) - set(children):  # reaped by Triton: stopped on purpose
                del self._known[pid]
                self._retired.discard(pid)
            now = time.monotonic()
            start = [m for m in dead if m not in self._dead]
            for model in start:
                self._dead[model] = now
                old = {pid for pid, s in self._known.items() if s.model == model}  # the generation to replace
                self.events.append((now, "dead", f"{model}: {', '.join(dead[model])}"))
                self._log(f"stub {', '.join(dead[model])} of {model} died; not ready until {model} is reloaded")
                self._spawn(lambda m=model, o=old: self._recover(m, o), f"freshrec-reload-{model}")

    def _check_models(self) -> None:
        """Triton's own view, once a second. Only an answer counts: a check that times out (both
        cores busy loading a version, say) changes nothing, and Triton counts as not answering
        after three in a row."""
        base = f"http://{self.server.http_url}"
        live = _get_status(f"{base}/v2/health/live")
        states = {m: _get_status(f"{base}/v2/models/{m}/ready") for m in self.models}
        now = time.monotonic()
        with self._lock:
            self._silent = 0 if live is not None else self._silent + 1
            self._triton_live = live == 200 or (live is None and self._silent < 3)
            for model, code in states.items():
                if code == 200:
                    self._not_ready.pop(model, None)
                elif code is not None:
                    self._not_ready.setdefault(model, now)

    def _recover(self, model: str, old_generation: set[int]) -> None:
        """Reload ``model`` as a new generation (module docstring), then retire the old one."""
        t0 = time.monotonic()
        for attempt in range(1, 6):
            if self._stop.is_set() or self.draining:
                return
            try:
                self._reload(model)
            except Exception as exc:  # noqa: BLE001 - reported, then retried
                detail = str(getattr(exc, "reason", exc))[:200]
                self.events.append((time.monotonic(), "reload_failed", f"{model}: {detail}"))
                self._log(f"reload of {model} failed (attempt {attempt}): {detail}")
                self._stop.wait(2.0 * attempt)
                continue
            with self._lock:
                self._retired |= old_generation
                self._dead.pop(model, None)
            self.events.append((time.monotonic(), "reloaded", f"{model} in {time.monotonic() - t0:.1f} s"))
            self._log(f"reloaded {model} in {time.monotonic() - t0:.1f} s; ready again")
            if not self._stop.wait(self.retire_after_s):
                self._retire(model, old_generation)
            return
        self._log(f"giving up on reloading {model}; /live turns false after {self.live_grace_s:.0f} s")

    def _reload(self, model: str) -> None:
        base = f"http://{self.server.http_url}"
        headers = self.server.admin_http_headers
        with urllib.request.urlopen(urllib.request.Request(f"{base}/v2/models/{model}/config", headers=headers), timeout=10) as r:
            config = json.load(r)
        with self._lock:
            self._restarts += 1
            generation = self._restarts
        config.setdefault("parameters", {})[RESTART_PARAMETER] = {"string_value": str(generation)}
        body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
        request = urllib.request.Request(f"{base}/v2/repository/models/{model}/load", data=body, method="POST",
                                         headers={**headers, "Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=600) as r:
            r.read()

    def _retire(self, model: str, old_generation: set[int]) -> None:
        pid0 = self.server.pid
        for pid in sorted(old_generation):
            st = _stat(pid)
            if st is not None and st[0] != "Z" and st[1] == pid0:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.events.append((time.monotonic(), "retired", f"{model}: pid {pid}"))
                self._log(f"retired stub pid {pid} of the swapped-out {model} generation")


def _get_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _health_server(supervisor: Supervisor, host: str, port: int) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            health = supervisor.health()
            if self.path in ("/ready", "/v2/health/ready"):
                ok = health.ready
            elif self.path in ("/live", "/v2/health/live"):
                ok = health.live
            else:
                self.send_error(404)
                return
            body = json.dumps({"live": health.live, "ready": health.ready, "reason": health.reason}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:  # probes every few seconds: no access log
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


# --------------------------------------------------------------------------------------------
# CLI entry
# --------------------------------------------------------------------------------------------


class _StopRequested(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def serve_forever(
    options: ServerOptions,
    models: Sequence[str],
    *,
    health_port: int | None = None,
    health_host: str | None = None,
    admin_key_file: Path | None = None,
    server_root: Path | None = None,
    ready_timeout: float = 300.0,
    work_dir: Path | None = None,
    out: TextIO | None = None,
    on_ready: Callable[[TritonServer, threading.Event], None] | None = None,
) -> int:
    """Run a supervised server in the foreground until SIGINT/SIGTERM, then drain it.

    Must run in the main thread (it installs signal handlers). Returns a process exit code: 0
    after a drain, 1 if the server failed to start or died by itself. `on_ready(server, stop)` is
    called once every model is ready (`stop` is set when the supervisor stops).
    """
    out = out or sys.stdout
    supervisor = Supervisor(options, models, health_port=health_port, health_host=health_host, work_dir=work_dir,
                            server_root=server_root)  # fmt: skip

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Raise once, to leave whatever we wait in; a second signal must not break the drain.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _StopRequested(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = supervisor.server
    try:
        try:
            print(f"tritonserver log: {server.log_path}", file=out, flush=True)
            if admin_key_file is not None:
                print(f"admin key: in {admin_key_file} (header {next(iter(server.admin_http_headers))}; "
                      f"over gRPC {next(iter(server.admin_grpc_headers))})", file=out, flush=True)  # fmt: skip
            supervisor.start(ready_timeout)
            print(f"models  {' '.join(supervisor.models)}", file=out)
            print(f"grpc    {server.grpc_url}", file=out)
            print(f"http    http://{server.http_url}", file=out)
            if supervisor.health_url:
                print(f"health  {supervisor.health_url}/ready {supervisor.health_url}/live", file=out)
            print(f"metrics {server.metrics_url}", file=out, flush=True)
            if on_ready is not None:  # e.g. the version follower; stopped with the supervisor
                on_ready(server, supervisor._stop)
            while server.is_alive():
                time.sleep(0.5)
            print(f"tritonserver exited unexpectedly with code {server.returncode}:\n{server.log_tail()}", file=sys.stderr)
            return server.returncode or 1
        except _StopRequested as stop:
            print(f"{stop}: draining (readiness false; in-flight requests finish, then the server stops)", file=out, flush=True)
            rc = supervisor.drain()
            return 0 if rc in (0, None) else rc
        except ServerStartError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    finally:
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""`freshrec bench rollout`: what an update and its rollouts cost the clients of a served build.

    freshrec bench rollout [--build build] [--repository <build's embedded>] [--work build/bench/rollout]
                           [--out docs/benchmarks] [--concurrency 4] [--smoke]

1. **Private copies** of the repository (graphs hard-linked, the rest copied; a broken graph is
   unlinked before it is written) and of the build's SQLite state, under `--work`.
2. **Events after the build**: each stored user rates a few of their current top-20 (the
   in-process reference pipeline of version 1, so the events follow the served model), a third of
   them one item added after the build first (`simulate_events`).
3. **A supervised tritonserver** (`freshrec serve`'s Supervisor, in-process engine, the private
   repository and state through FRESHREC_STATE) with a known admin key.
4. **Update**: `freshrec update` on the private repository and state while the server serves
   version 1 (timed); version 3, a copy of version 2 in every model with a corrupt user_tower graph
   and a card whose gate passed, is written beside it for the failing rollout.
5. **Steady state**: perf_analyzer on `recommend` at `--concurrency` until a fixed number of
   requests is measured (profile export on), as a chain of runs (see 6); again after the rollouts.
6. **Under rollouts**: perf_analyzer again, for as long as the rollouts take, while a thread does, a
   few seconds apart: rollout to 2, rollback to 1, rollout to 2 again, and the failing rollout to 3
   (which must raise RolloutError and leave version 2 serving); each step's start and end are kept
   in monotonic and wall-clock time (the latter aligns with perf_analyzer's per-request
   timestamps). perf_analyzer 2.60 aborts a run at its first failed request (exit 99, no CSV, no
   profile export: the run's latencies are lost), so the traffic is a chain of short runs (a few
   seconds each at the steady throughput), the next started as soon as one ends; failures are
   counted from perf_analyzer's error lines and from Triton's statistics. `--smoke`: the rollout
   to 2 and the failing rollout only.
7. **Report**: docs/benchmarks/rollout.md and rollout.json (`render_md`).

Triton 2.51 keeps inference statistics per loaded version and drops a version's at its unload (a
version loaded again starts from zero), so `StatsWatch` samples them every 0.2 s and sums the
versions' generations.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from freshrec.config import UpdateOptions

TARGET_P99_RATIO = 2.0  # p99 of the requests started during a rollout <= 2x the steady state's
TARGET_UPDATE_TO_SERVING_S = 600.0  # update start -> new version serving, ML-100K on 2 cores
NEW_ITEM = ("bench:new-film", "Galaxy Rangers (1998) Action|Adventure|Sci-Fi")
CORRUPT_GRAPH = b"not an onnx graph (freshrec bench rollout: a failing rollout)"
STATS_EVERY_S = 0.2


@dataclass(frozen=True)
class RolloutBenchOptions:
    build: Path = Path("build")
    repository: Path | None = None  # default: the build's embedded repository (build.json)
    work: Path = Path("build/bench/rollout")
    out: Path = Path("docs/benchmarks")
    concurrency: int = 4
    smoke: bool = False
    requests: int | None = None  # steady-state requests (default 3000; smoke 200)
    run_s: float | None = None  # each perf_analyzer run under rollouts: this long at the steady throughput (5; smoke 3)
    gap_s: float | None = None  # seconds between rollout steps (5; smoke 1)
    epochs: int | None = None  # the update's fine-tuning passes (default the update's own; smoke 1)
    tolerance: float = UpdateOptions.tolerance  # the update's gate tolerance (the update's default)

    @property
    def steady_requests(self) -> int:
        return self.requests or (200 if self.smoke else 3000)

    @property
    def warmup(self) -> int:
        return 10 if self.smoke else 50

    @property
    def warm_requests(self) -> int:
        return 20 if self.smoke else 100

    @property
    def run_seconds(self) -> float:
        return self.run_s or (3.0 if self.smoke else 5.0)

    @property
    def gap_seconds(self) -> float:
        return self.gap_s if self.gap_s is not None else (1.0 if self.smoke else 5.0)

    @property
    def update_epochs(self) -> int:
        return self.epochs or (1 if self.smoke else UpdateOptions.epochs)


# -- inputs ----------------------------------------------------------------------------------------
def resolve_repository(build: Path, repository: Path | None) -> Path:
    if repository is None:
        report = Path(build) / "build.json"
        repository = Path(json.loads(report.read_text())["repositories"]["embedded"]) if report.exists() else Path("model_repository/embedded")
    repository = Path(repository)
    if not (repository / "recommend" / "config.pbtxt").exists():
        raise FileNotFoundError(f"{repository}: no model repository (run `freshrec build`)")
    return repository


def private_repository(src: Path, dst: Path) -> Path:
    """A copy of a repository the benchmark may break: graphs hard-linked (MiniLM is ~90 MB),
    everything else copied. A graph to break must be unlinked first, never written through."""

    def copy(s: str, d: str) -> None:
        (os.link if s.endswith(".onnx") else shutil.copy2)(s, d)

    shutil.copytree(src, dst, copy_function=copy)
    return dst


def simulate_events(repository: Path, state: Path, version: int = 1, picks: int = 6, seed: int = 0, new_item: bool = True) -> dict[str, Any]:
    """Stores what users did after the build into `state`: each stored user rates `picks` of their
    current top-20 from the reference pipeline of `version` (PyTorch, the repository's
    checkpoints), so the events follow the served model; with `new_item`, one item is added after
    the build (through the pipeline: text embedding, content, vector) and a third of the users
    rate it first. The events start an hour after the newest stored one, over six days."""
    from freshrec.config import DeployConfig
    from freshrec.serving.engines import load_reference
    from freshrec.serving.pipeline import Recommender
    from freshrec.store import Event, open_store

    t0 = time.time()
    engine, tokenizer, cfg = load_reference(Path(repository) / "recommend" / str(version))
    store = open_store(f"sqlite:///{state}")
    try:
        ref = Recommender(store, engine, tokenizer, cfg, DeployConfig(version=version, index="exact", index_cache="off"))
        if new_item:
            ref.upsert([NEW_ITEM[0]], [NEW_ITEM[1]])
        start = max((e.timestamp for e in store.events()), default=0.0) + 3600.0
        rng = np.random.default_rng(seed)
        events, fans = [], []
        users = sorted(store.user_ids())
        for j, user in enumerate(users):
            top = ref.recommend(user, k=20).item_ids
            chosen = [top[i] for i in sorted(rng.choice(len(top), min(picks, len(top)), replace=False))]
            if new_item and j % 3 == 0:
                chosen = [NEW_ITEM[0], *[p for p in chosen if p != NEW_ITEM[0]][: picks - 1]]
                fans.append(user)
            for n, item in enumerate(chosen):
                ts = start + 3600 * (n * 24 + j % 24)
                events.append(Event(user, item, "rate", ts, float(rng.integers(3, 6)), f"bench-rollout:{user}:{n}"))
        store.add_events(events)
    finally:
        store.close()
    return {"events": len(events), "users": len(users), "new_item_fans": len(fans), "new_item": NEW_ITEM[0] if new_item else None,
            "from_timestamp": start, "seconds": round(time.time() - t0, 1)}  # fmt: skip


def failing_version(repo: Path, src: int, dst: int) -> list[str]:
    """Version `dst`: a copy of version `src` in every model, with a corrupt user_tower graph and a
    card whose gate passed (so `rollout` tries it). Returns the models copied."""
    from freshrec.contract import ONNX_FILE, SETTINGS_FILE
    from freshrec.export.repository import read_card, write_card

    def copy(s: str, d: str) -> None:
        (os.link if s.endswith(".onnx") else shutil.copy2)(s, d)

    models = []
    for d in sorted(Path(repo).iterdir()):
        if (d / "config.pbtxt").exists() and (d / str(src)).is_dir():
            shutil.copytree(d / str(src), d / str(dst), copy_function=copy)
            models.append(d.name)
            settings = d / str(dst) / SETTINGS_FILE
            if settings.exists():
                s = json.loads(settings.read_text())
                if isinstance(s.get("deploy"), dict):
                    s["deploy"]["version"] = dst
                settings.write_text(json.dumps(s, indent=2, sort_keys=True))
    graph = Path(repo) / "user_tower" / str(dst) / ONNX_FILE
    graph.unlink()  # a hard link to version src's graph: replaced, never written through
    graph.write_bytes(CORRUPT_GRAPH)
    card = read_card(repo, src)
    card.pop("checksums", None)
    card.update(version=dst, parent=src, created=time.time(), kind="bench-corrupt")
    card["gate"] = {**card.get("gate", {}), "passed": True, "note": "freshrec bench rollout: a copy of version "
                    f"{src} with a corrupt user_tower graph, to measure a failing rollout"}  # fmt: skip
    write_card(repo, card)
    return models


# -- Triton's statistics, summed over versions -----------------------------------------------------
class StatsWatch:
    """Samples Triton's inference statistics of one model every `every_s` seconds in a thread:
    successes and failures summed over its versions. Triton 2.51 drops a version's statistics when
    it unloads and starts a version loaded again from zero, so each version's last counts are kept
    when it disappears or its counts go back. What an unloaded version answered in its last
    `every_s` before the unload is missed (the requests in flight on it then; the failures a load
    causes come while the new version loads, long before)."""

    def __init__(self, grpc_url: str, model: str = "recommend", every_s: float = STATS_EVERY_S) -> None:
        self.grpc_url, self.model, self.every_s = grpc_url, model, every_s
        # (monotonic before the call, monotonic after it, successes, failures), cumulative
        self.samples: list[tuple[float, float, int, int]] = []
        self.errors = 0
        self._done = [0, 0]
        self._current: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="freshrec-stats-watch", daemon=True)

    def __enter__(self) -> "StatsWatch":
        import tritonclient.grpc as grpcclient

        self._client = grpcclient.InferenceServerClient(self.grpc_url)
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> tuple[int, int]:
        t = time.monotonic()
        with self._lock:
            try:
                stats = self._client.get_inference_statistics(self.model, as_json=True)
            except Exception:  # noqa: BLE001 - a missed sample; the next one counts
                self.errors += 1
                return self.total()
            now = {}
            for m in stats.get("model_stats", []):
                inf = m.get("inference_stats", {})
                now[str(m.get("version", ""))] = (int(inf.get("success", {}).get("count", 0) or 0), int(inf.get("fail", {}).get("count", 0) or 0))
            for v, (ok, bad) in self._current.items():
                if v not in now or now[v][0] < ok or now[v][1] < bad:  # unloaded, or loaded again from zero
                    self._done[0] += ok
                    self._done[1] += bad
            self._current = now
            total = self.total()
            self.samples.append((t, time.monotonic(), *total))
            return total

    def total(self) -> tuple[int, int]:
        return self._done[0] + sum(c[0] for c in self._current.values()), self._done[1] + sum(c[1] for c in self._current.values())

    def before(self, t: float) -> tuple[int, int]:
        """The counts of the last sample whose call had returned by monotonic time `t` (no later state)."""
        found = self.samples[0]
        for s in self.samples:
            if s[1] <= t:
                found = s
        return found[2], found[3]

    def after(self, t: float) -> tuple[int, int]:
        """The counts of the first sample whose call began at or after monotonic time `t` (no earlier state)."""
        for s in self.samples:
            if s[0] >= t:
                return s[2], s[3]
        return self.samples[-1][2], self.samples[-1][3]

    def between(self, t0: float, t1: float) -> dict[str, int]:
        """Successes and failures counted from `t0` to `t1` (monotonic): a window that holds the
        whole span (and at most a sampling interval more on either side)."""
        a, b = self.before(t0), self.after(t1)
        return {"success": b[0] - a[0], "failures": b[1] - a[1]}


# -- perf_analyzer ---------------------------------------------------------------------------------
@dataclass
class Segment:
    """One perf_analyzer run."""

    name: str
    requests: int
    warmup: int
    command: list[str]
    rc: int | None = None
    start_wall_ns: int = 0
    end_wall_ns: int = 0
    start_mono: float = 0.0
    end_mono: float = 0.0
    outcome: str = ""  # "completed", "aborted at a failed request", "stalled (killed)", "failed"
    errors: list[str] | None = None  # perf_analyzer's "Thread [i] had error: ..." lines
    measured: int = 0  # requests in the profile export
    throughput: float | None = None  # measured requests / (last response - first send), from the profile export
    log: str = ""

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("command")
        d["seconds"] = round(self.end_mono - self.start_mono, 2)
        return d


def _error_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "had error" in line or line.strip().startswith("Thread [")]


def run_pa(pa: list[str], seg: Segment, csv_path: Path, watch: StatsWatch, timeout_s: float) -> list[tuple[int, float]]:
    """Runs one perf_analyzer command (killed when it stalls or outlasts `timeout_s`) -> the
    measured requests as (send wall-clock ns, latency ms) from its profile export."""
    from freshrec.offline.benchmarks.serving.pa_output import parse_profile_export
    from freshrec.offline.benchmarks.serving.runs import POLL_S, STALL_GRACE_S

    profile = csv_path.with_suffix(".profile.json")
    for stale in (csv_path, profile):
        stale.unlink(missing_ok=True)
    expected = seg.requests + seg.warmup
    seg.start_wall_ns, seg.start_mono = time.time_ns(), time.monotonic()
    base = watch.total()
    answered_at, why = None, None
    with subprocess.Popen([*pa, *seg.command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            while True:
                try:
                    out, _ = proc.communicate(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                ok, bad = watch.total()
                if answered_at is None and (ok - base[0]) + (bad - base[1]) >= expected:
                    answered_at = now
                if now - seg.start_mono > timeout_s:
                    why = f"did not finish in {timeout_s:.0f} s"
                elif answered_at is not None and now - answered_at > STALL_GRACE_S:
                    why = f"still running {now - answered_at:.0f} s after the server had answered all {expected} requests"
                if why:
                    proc.kill()
                    out, _ = proc.communicate()
                    break
        except BaseException:
            proc.kill()
            raise
    seg.end_wall_ns, seg.end_mono, seg.rc = time.time_ns(), time.monotonic(), proc.returncode
    seg.log = str(csv_path.with_suffix(".log"))
    Path(seg.log).write_text(out + (f"\n--- killed by freshrec bench rollout: {why} ---\n" if why else ""))
    seg.errors = _error_lines(out)
    if why:
        seg.outcome = f"stalled (killed: {why})"
    elif seg.errors:
        seg.outcome = f"aborted at a failed request (exit {seg.rc})"
    elif seg.rc != 0:
        seg.outcome = f"failed (exit {seg.rc})"
    else:
        seg.outcome = "completed"
    if not profile.exists():
        return []
    parsed = parse_profile_export(profile.read_text())
    spans = parsed["spans"]
    seg.measured, seg.throughput = len(spans), round(parsed["throughput"], 1)
    return [(int(s), (d - s) / 1e6) for s, d in spans]


def _pa_command(grpc_url: str, concurrency: int, requests: int, warmup: int, input_data: Path, csv_path: Path) -> list[str]:
    from freshrec.offline.benchmarks.serving.plan import Spec
    from freshrec.offline.benchmarks.serving.runs import pa_args

    return pa_args(Spec("recommend", "recommend", (concurrency,), requests, warmup), concurrency, input_data, grpc_url, csv_path)


def _latency(lat: list[float]) -> dict[str, Any]:
    if not lat:
        return {"requests": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    q = np.percentile(lat, [50, 99])
    return {"requests": len(lat), "p50_ms": round(float(q[0]), 2), "p99_ms": round(float(q[1]), 2), "max_ms": round(float(max(lat)), 2)}


# -- the benchmark ---------------------------------------------------------------------------------
@dataclass
class Step:
    name: str
    target: int
    expect: str  # "served" or "RolloutError"
    call: Callable[[], dict]


def run(opts: RolloutBenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the benchmark (module docstring); writes rollout.md/.json into `opts.out`."""
    from freshrec.contract import served_models
    from freshrec.export.repository import served_versions
    from freshrec.lifecycle.rollout import RolloutError, Triton, rollback, rollout
    from freshrec.lifecycle.update import UpdateOptions, update
    from freshrec.offline.benchmarks.perf_analyzer import perf_analyzer_command, perf_analyzer_version
    from freshrec.offline.benchmarks.serving.inputs import Dataset, generate_inputs
    from freshrec.offline.benchmarks.serving.plan import Spec
    from freshrec.offline.benchmarks.serving.runs import RUN_TIMEOUT_S
    from freshrec.offline.machine import machine_info
    from freshrec.server_ext.launcher import ADMIN_HEADER, ServerOptions, find_free_ports
    from freshrec.server_ext.supervisor import Supervisor
    from freshrec.store.sqlite import copy_sqlite

    t_start = time.time()
    machine = machine_info()
    pa = perf_analyzer_command()  # fails loudly before anything starts
    src_repo = resolve_repository(opts.build, opts.repository)
    work = Path(opts.work).resolve()
    repo, state, raw = work / "repo", work / "state.db", work / "raw"
    for p in (repo, raw, work / "inputs", work / "triton"):
        shutil.rmtree(p, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    raw.mkdir()
    log(f"bench rollout: private copies of {src_repo} and {opts.build / 'state.db'} in {work}")
    private_repository(src_repo, repo)
    copy_sqlite(Path(opts.build) / "state.db", state)
    url = f"sqlite:///{state}"
    events = simulate_events(repo, state)
    log(f"bench rollout: {events['events']} events of {events['users']} users stored after the build ({events['seconds']}s)")

    key = secrets.token_hex(16)
    (work / "admin.key").write_text(key + "\n")
    (work / "admin.key").chmod(0o600)
    grpc_port, http_port, metrics_port = find_free_ports(3)
    sopts = ServerOptions(model_repository=repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                          env={"FRESHREC_STATE": url, "FRESHREC_ENGINE": "inprocess"}, admin_key=key)  # fmt: skip
    supervisor_log: list[str] = []
    sup = Supervisor(sopts, served_models("inprocess"), health_port=None, work_dir=work / "triton",
                     log=lambda m: supervisor_log.append(f"{time.monotonic():.2f} {m}"))  # fmt: skip
    t0 = time.monotonic()
    sup.start(ready_timeout=600)
    server_start_s = round(time.monotonic() - t0, 1)
    grpc_url, http_url = sup.server.grpc_url, sup.server.http_url
    triton = Triton(http_url, key, header=ADMIN_HEADER)
    log(f"bench rollout: tritonserver ready in {server_start_s}s (gRPC {grpc_url}, HTTP {http_url})")
    served_log: list[dict[str, Any]] = []

    def note(step: str) -> dict[str, Any]:
        loaded = {m: sorted(v) for m, v in triton.loaded().items()}
        served_log.append({"after": step, "loaded": loaded, "pinned": served_versions(repo)})
        return loaded

    try:
        note("server start")
        # -- update (while version 1 serves, no traffic) ----------------------------------------
        t0 = time.monotonic()
        card = update(UpdateOptions(repository=repo, state=url, epochs=opts.update_epochs, tolerance=opts.tolerance))
        update_s = round(time.monotonic() - t0, 1)
        if not card["gate"]["passed"]:
            raise RuntimeError(f"the update's gate refused the candidate ({card['gate']}); rerun with a wider --tolerance "
                               "to measure the rollouts (the gate's figures are in the card)")  # fmt: skip
        new = int(card["version"])
        bad = new + 1
        failing_version(repo, new, bad)
        log(f"bench rollout: update -> version {new} in {update_s}s; version {bad} = version {new} with a corrupt user_tower graph")

        ds = Dataset.load(url, repo)
        spec = Spec("recommend", "recommend", (opts.concurrency,), opts.steady_requests, opts.warmup)
        input_data = generate_inputs(ds, repo, [spec], work / "inputs", token="rollout")["recommend"][opts.concurrency]

        with StatsWatch(grpc_url) as watch:
            # -- warm-up: the instances' first requests, at most one per instance at a time ----------
            warm_c = min(2, opts.concurrency)
            csv_path = raw / "warmup.csv"
            seg = Segment(f"warm-up (concurrency {warm_c})", opts.warm_requests, 0,
                          _pa_command(grpc_url, warm_c, opts.warm_requests, 0, input_data, csv_path))  # fmt: skip
            warm_lat = [lat for _, lat in run_pa(pa, seg, csv_path, watch, RUN_TIMEOUT_S + 0.25 * opts.warm_requests)]
            time.sleep(2 * STATS_EVERY_S)
            warm = {**_latency(warm_lat), "concurrency": warm_c, "throughput": seg.throughput,
                    "triton": watch.between(seg.start_mono, seg.end_mono + 2 * STATS_EVERY_S),
                    "perf_analyzer_failed_requests": len(seg.errors or []), "segments": [seg.summary()]}  # fmt: skip
            log(f"bench rollout: {seg.name}: {seg.outcome}, {seg.measured} requests measured; Triton: {warm['triton']['failures']} failed")
            # -- steady state ---------------------------------------------------------------------
            def steady_state(name: str, stem: str) -> tuple[dict[str, Any], list[Segment]]:
                """perf_analyzer at the concurrency until `steady_requests` are measured, as a chain of
                runs of a sixth of that each (one that aborts at a failed request loses only its own
                latencies; every run's failures count), at most three times the runs needed."""
                segs, lat_ms = [], []
                per_run = max(50, opts.steady_requests // 6)
                timeout = RUN_TIMEOUT_S + 0.25 * (per_run + opts.warmup)
                while len(lat_ms) < opts.steady_requests and len(segs) < 18:
                    n = len(segs) + 1
                    csv_path = raw / f"{stem}.{n}.csv"
                    warmup = opts.warmup if n == 1 else 0
                    seg = Segment(f"{name}, run {n}", per_run, warmup,
                                  _pa_command(grpc_url, opts.concurrency, per_run, warmup, input_data, csv_path))  # fmt: skip
                    lat_ms += [ms for _, ms in run_pa(pa, seg, csv_path, watch, timeout)]
                    segs.append(seg)
                    log(f"bench rollout: {seg.name}: {seg.outcome}, {seg.measured} requests measured")
                time.sleep(2 * STATS_EVERY_S)
                counts = watch.between(segs[0].start_mono, segs[-1].end_mono + 2 * STATS_EVERY_S)
                done = [x for x in segs if x.throughput]
                tp = round(sum(x.measured for x in done) / sum(x.measured / x.throughput for x in done), 1) if done else None
                res = {**_latency(lat_ms), "throughput": tp, "triton": counts, "runs": len(segs), "aborted_runs": sum(1 for x in segs if x.errors),
                       "perf_analyzer_failed_requests": sum(len(x.errors or []) for x in segs), "segments": [x.summary() for x in segs]}  # fmt: skip
                note(name)
                log(f"bench rollout: {name}: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, {res['throughput']}/s, "
                    f"Triton: {counts['failures']} failed")  # fmt: skip
                return res, segs

            steady, steady_segments = steady_state("steady state", "steady")
            steady_tp = steady["throughput"] or 50.0

            # -- under rollouts -------------------------------------------------------------------
            steps = [Step(f"rollout to {new}", new, "served", lambda: rollout(repo, triton, new, state=url))]
            if not opts.smoke:
                steps += [Step("rollback to 1", 1, "served", lambda: rollback(repo, triton, state=url)),
                          Step(f"rollout to {new} again", new, "served", lambda: rollout(repo, triton, new, state=url))]  # fmt: skip
            steps.append(Step(f"failing rollout to {bad} (corrupt user_tower graph)", bad, "RolloutError",
                              lambda: rollout(repo, triton, bad, state=url)))  # fmt: skip
            records: list[dict[str, Any]] = []
            traffic_started = threading.Event()

            def do_steps() -> None:
                traffic_started.wait(120)
                for step in steps:
                    time.sleep(opts.gap_seconds)
                    r: dict[str, Any] = {"step": step.name, "target": step.target, "expected": step.expect,
                                         "start_wall_ns": time.time_ns(), "start_mono": time.monotonic()}  # fmt: skip
                    try:
                        result = step.call()
                        r["outcome"], r["result"] = "served", result
                    except RolloutError as exc:
                        r["outcome"], r["error"] = "RolloutError", str(exc)
                    except Exception as exc:  # noqa: BLE001 - reported as an unexpected outcome
                        r["outcome"], r["error"] = type(exc).__name__, str(exc)
                    r["end_wall_ns"], r["end_mono"] = time.time_ns(), time.monotonic()
                    r["seconds"] = round(r["end_mono"] - r["start_mono"], 2)
                    try:
                        r["served_after"] = note(step.name).get("recommend")
                    except Exception as exc:  # noqa: BLE001
                        r["served_after"] = f"unknown ({exc})"
                    r["as_expected"] = r["outcome"] == step.expect and (
                        r["served_after"] == [step.target] if step.expect == "served" else r["served_after"] == [new])
                    records.append(r)
                    log(f"bench rollout: {step.name}: {r['outcome']} in {r['seconds']}s; recommend serves {r['served_after']}")
                time.sleep(opts.gap_seconds)

            run_requests = max(50, int(steady_tp * opts.run_seconds))
            roller = threading.Thread(target=do_steps, name="freshrec-bench-rollouts", daemon=True)
            roller.start()
            segments: list[Segment] = []
            lat: list[tuple[int, float]] = []
            phase_start = time.monotonic()
            while True:
                n = len(segments) + 1
                requests, warmup = run_requests, (opts.warmup if n == 1 else 0)
                csv_path = raw / f"rollouts.{n}.csv"
                seg = Segment(f"under rollouts, run {n}", requests, warmup,
                              _pa_command(grpc_url, opts.concurrency, requests, warmup, input_data, csv_path))  # fmt: skip
                threading.Timer(0.5, traffic_started.set).start()
                lat += run_pa(pa, seg, csv_path, watch, RUN_TIMEOUT_S + 0.25 * (requests + warmup) + 600)
                segments.append(seg)
                log(f"bench rollout: {seg.name}: {seg.outcome}, {seg.measured} requests measured" + (f"; {seg.errors}" if seg.errors else ""))
                if not roller.is_alive() or n >= 1000:
                    break
            roller.join()
            time.sleep(2 * STATS_EVERY_S)
            phase_end = time.monotonic()
            phase_triton = watch.between(phase_start, phase_end)
            # -- steady state again, version 2 serving: did the machine itself change meanwhile? ----
            steady_after, _ = steady_state(f"steady state after the rollouts (version {new})", "steady_after")
            stats_errors = watch.errors
        note("end")

        # -- figures ----------------------------------------------------------------------------
        steady_p99 = steady["p99_ms"]

        def ratio(p99: float | None) -> float | None:
            return round(p99 / steady_p99, 2) if p99 is not None and steady_p99 else None

        # A step's window: from its start until the next step starts (the phase's end after the last),
        # so what a switch causes just after the call returns (new instances' first requests, the
        # old ones unloading) counts against it; the step's own span is reported beside it.
        windows_lat: list[float] = []
        for i, r in enumerate(records):
            nxt = records[i + 1] if i + 1 < len(records) else None
            r["window_end_mono"] = nxt["start_mono"] if nxt else phase_end
            r["window_end_wall_ns"] = nxt["start_wall_ns"] if nxt else time.time_ns() - int((time.monotonic() - phase_end) * 1e9)
            inside = [ms for t, ms in lat if r["start_wall_ns"] <= t < r["window_end_wall_ns"]]
            windows_lat += inside
            r.update(_latency(inside))
            r["p99_ratio"] = ratio(r["p99_ms"])
            r["during_call"] = _latency([ms for t, ms in lat if r["start_wall_ns"] <= t <= r["end_wall_ns"]])
            r["during_call"]["p99_ratio"] = ratio(r["during_call"]["p99_ms"])
            r["triton"] = watch.between(r["start_mono"], r["window_end_mono"])
            # perf_analyzer's errors: the runs that aborted inside this window
            r["perf_analyzer_failed_requests"] = sum(len(s.errors or []) for s in segments
                                                     if s.errors and r["start_mono"] <= s.end_mono < r["window_end_mono"])  # fmt: skip
            r["failed_requests"] = max(r["triton"]["failures"], r["perf_analyzer_failed_requests"])
            r["lost_to_aborts"] = sum(1 for s in segments if s.errors and s.start_mono < r["window_end_mono"] and s.end_mono >= r["start_mono"])
        all_windows = {**_latency(windows_lat), "triton_failures": sum(r["triton"]["failures"] for r in records),
                       "perf_analyzer_failed_requests": sum(r["perf_analyzer_failed_requests"] for r in records),
                       "failed_requests": sum(r["failed_requests"] for r in records)}  # fmt: skip
        all_windows["p99_ratio"] = ratio(all_windows["p99_ms"])
        all_windows["triton_success"] = sum(r["triton"]["success"] for r in records)
        # the phase before the first step and any time no window covers: failures with no rollout going on
        outside = {"success": phase_triton["success"] - all_windows["triton_success"],
                   "failures": phase_triton["failures"] - all_windows["triton_failures"],
                   "seconds": round((records[0]["start_mono"] - phase_start) if records else phase_end - phase_start, 1)}  # fmt: skip
        # perf_analyzer's restarts leave short gaps without traffic: how much of the phase had a run going
        covered = sum(s.end_mono - s.start_mono for s in segments)
        sends = [t for t, _ in lat]
        phase_tp = round(len(lat) / ((max(t + ms * 1e6 for t, ms in lat) - min(sends)) / 1e9), 1) if len(lat) > 1 else None
        phase = {**_latency([ms for _, ms in lat]), "throughput": phase_tp, "triton": phase_triton, "seconds": round(phase_end - phase_start, 1),
                 "perf_analyzer_failed_requests": sum(len(s.errors or []) for s in segments),
                 "perf_analyzer_aborts": sum(1 for s in segments if s.errors), "segments": [s.summary() for s in segments],
                 "outside_windows": outside, "run_requests": run_requests, "perf_analyzer_running_share": round(covered / max(phase_end - phase_start, 1e-3), 3)}  # fmt: skip
        first = next((r for r in records if r["target"] == new and r["outcome"] == "served"), None)
        update_to_serving = round(update_s + first["seconds"], 1) if first else None
    finally:
        sup.stop()

    report = {
        "benchmark": "rollout",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t_start)),
        "seconds": round(time.time() - t_start, 1),
        "smoke": opts.smoke,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "build": str(opts.build),
        "repository": str(src_repo),
        "work": str(work),
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "perf_analyzer": {"version": perf_analyzer_version(pa), "argv_prefix": pa},
        "server": {"engine": "inprocess", "start_s": server_start_s, "supervisor_log": supervisor_log, "stats_read_errors": stats_errors},
        "concurrency": opts.concurrency,
        "events_added": events,
        "update": {"seconds": update_s, "version": new, "parent": card["parent"], "card_seconds": card.get("seconds"),
                   "epochs": opts.update_epochs, "gate": card["gate"], "data": card["data"], "training": card["training"]},  # fmt: skip
        "update_to_serving_s": update_to_serving,
        "first_rollout_s": first["seconds"] if first else None,
        "warmup": warm,
        "steady": steady,
        "steady_after": steady_after,
        "rollout_phase": phase,
        "rollouts": [{k: v for k, v in r.items()} for r in records],
        "all_rollout_windows": all_windows,
        "served": served_log,
        "final_recommend_versions": served_log[-1]["loaded"].get("recommend"),
        "commands": commands(opts, src_repo, work, grpc_url, http_url, steady_segments[-1], segments[0], new, bad),
    }
    report["targets"] = targets(report)
    report["as_expected"] = all(r["as_expected"] for r in records) and report["final_recommend_versions"] == [new]
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "rollout.md").write_text(render_md(report))
    log(f"bench rollout: {out / 'rollout.md'} and rollout.json written ({report['seconds']:.0f}s in all)")
    return report


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets beside the measured figures (None: unmeasured, never met)."""
    out = []
    for x in r["rollouts"]:
        failed = x["failed_requests"]
        out.append({"target": f"0 failed requests during '{x['step']}' (the larger of Triton's and perf_analyzer's counts)", "measured": failed,
                    "met": failed == 0})  # fmt: skip
    for x in r["rollouts"]:
        out.append({"target": f"p99 during '{x['step']}' <= {TARGET_P99_RATIO:g}x steady state (ratio)", "measured": x["p99_ratio"],
                    "met": x["p99_ratio"] is not None and x["p99_ratio"] <= TARGET_P99_RATIO})  # fmt: skip
    a = r["all_rollout_windows"]
    out.append({"target": f"p99 during all rollouts <= {TARGET_P99_RATIO:g}x steady state (ratio)", "measured": a["p99_ratio"],
                "met": a["p99_ratio"] is not None and a["p99_ratio"] <= TARGET_P99_RATIO})  # fmt: skip
    u = r["update_to_serving_s"]
    out.append({"target": f"update start -> new version serving <= {TARGET_UPDATE_TO_SERVING_S:.0f} s (ML-100K, 2 cores)", "measured": u,
                "met": u is not None and u <= TARGET_UPDATE_TO_SERVING_S})  # fmt: skip
    return out


def commands(opts: RolloutBenchOptions, src_repo: Path, work: Path, grpc_url: str, http_url: str, steady: Segment, under: Segment,
             new: int, bad: int) -> list[str]:  # fmt: skip
    """The command lines that rerun the benchmark, and its steps by hand on the kept work folder."""
    from freshrec.offline.benchmarks.serving.runs import shown_command

    def rel(p: Path) -> str:
        p = Path(p).resolve()
        return os.path.relpath(p, Path.cwd()) if Path.cwd() in p.parents else str(p)

    bench = ["freshrec", "bench", "rollout", "--build", rel(opts.build), "--repository", rel(src_repo), "--work", rel(work),
             "--out", rel(opts.out), "--concurrency", str(opts.concurrency)]  # fmt: skip
    if opts.smoke:
        bench.append("--smoke")
    if opts.tolerance != UpdateOptions.tolerance:
        bench += ["--tolerance", str(opts.tolerance)]
    repo, state, key = rel(work / "repo"), f"sqlite:///{rel(work / 'state.db')}", rel(work / "admin.key")
    server = ["--url", http_url, "--admin-key-file", key]
    return [
        shlex.join(bench),
        shlex.join(["freshrec", "update", "--repository", repo, "--state", state, "--epochs", str(opts.update_epochs),
                    "--tolerance", str(opts.tolerance)]),  # fmt: skip
        shlex.join(["freshrec", "rollout", "--repository", repo, "--state", state, "--version", str(new), *server]),
        shlex.join(["freshrec", "rollback", "--repository", repo, "--state", state, *server]),
        shlex.join(["freshrec", "rollout", "--repository", repo, "--state", state, "--version", str(bad), *server]),
        shown_command(steady.command, work),
        shown_command(under.command, work),
    ]


# -- the report ------------------------------------------------------------------------------------
def _f(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _per_k(c: dict[str, int]) -> str:
    total = c["success"] + c["failures"]
    return f"{c['failures']} of {total} ({1000 * c['failures'] / total:.2f}/1000)" if total else "-"


def _first_line(text: str, n: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return (line[:n] + " ...") if len(line) > n or "\n" in text.strip() else line


def render_md(r: dict[str, Any]) -> str:
    sa, out = r["steady_after"], r["rollout_phase"]["outside_windows"]
    m, wu, st, ph, aw, up = r["machine"], r["warmup"], r["steady"], r["rollout_phase"], r["all_rollout_windows"], r["update"]
    gate = up["gate"]
    gate_text = (f"gate {'passed' if gate.get('passed') else 'refused'}: NDCG@10 {gate['parent']['ndcg10']:.4f} (version {up['parent']}) -> "
                 f"{gate['candidate']['ndcg10']:.4f} (candidate), tolerance {gate['tolerance']}") if "candidate" in gate else str(gate)  # fmt: skip
    aborts = ph["perf_analyzer_aborts"]
    L = [
        "# Rollouts under load: update, rollout, rollback and a failing rollout while perf_analyzer sends `recommend`",
        "",
        f"`freshrec bench rollout{' --smoke' if r['smoke'] else ''}` on {r['date_utc']} UTC ({r['seconds']:.0f} s in all). "
        f"Model repository `{r['repository']}` (a private copy, graphs hard-linked), the build's state copied, "
        f"{r['events_added']['events']} events of {r['events_added']['users']} users stored after the build "
        f"(each rates 6 of their current top-20 from version 1's reference pipeline; a third rate one item added after the build first). "
        f"A supervised tritonserver (`freshrec serve`'s Supervisor, in-process engine) started in {r['server']['start_s']} s.",
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']} (kernel {m['kernel']}, glibc {m['glibc']}), "
        f"Python {m['python']}; tritonserver {m['tritonserver']}; perf_analyzer {r['perf_analyzer']['version']}; "
        f"onnxruntime {m['onnxruntime']}; torch {m['torch']}; GPU: {m.get('gpu') or 'none'}. Load average (1, 5, 15 min) at the start: "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}; at the end: {', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}. "
        "perf_analyzer, the rollouts and the server share the machine.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *[f"| {t['target']} | {_f(t['measured'])} | {'met' if t['met'] else '**MISSED**'} |" for t in r["targets"]],
        "",
        "## Update",
        "",
        f"`freshrec update` (epochs {up['epochs']}) on the private repository and state while version 1 served (no traffic): "
        f"version {up['version']} written in **{up['seconds']} s** ({up['data']['events']} new events, {up['data']['train_targets']} "
        f"training targets, {up['data']['holdout_events']} held out; {gate_text}). Its first rollout took {_f(r['first_rollout_s'])} s "
        f"under traffic: **update start -> version {up['version']} serving: {_f(r['update_to_serving_s'], 1)} s** (update + rollout; "
        "the steady-state run between them is the benchmark's, not the update's).",
        "",
        "## Failed requests and latency per phase",
        "",
        f"perf_analyzer on `recommend`, gRPC, concurrency {r['concurrency']}, synchronous clients, per-request timestamps and "
        "latencies from its profile export. Failed requests are counted twice: by perf_analyzer (each of its threads stops at its "
        "first failed request; perf_analyzer 2.60 then aborts the run, exit 99, with no CSV or profile export, so the benchmark "
        "starts it again at once; each phase is therefore a chain of short runs, so that an abort loses few latencies: in steady "
        "state runs of a sixth of its request count until that many are measured, under rollouts runs sized to "
        f"{r['options']['run_s'] or ('3' if r['smoke'] else '5')} s at the steady throughput for as long as the rollouts go on) "
        "and by Triton's own statistics of `recommend` (summed over versions, "
        f"sampled every {STATS_EVERY_S} s: Triton 2.51 drops a version's statistics when it unloads). Triton counts the requests it "
        "refuses itself (queue timeout, full queue); an error a model answers counts as a success there, so both counts are shown.",
        "",
        "| phase | requests measured | throughput /s | p50 ms | p99 ms | failed (perf_analyzer) | Triton success | Triton failures | perf_analyzer |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| warm-up (concurrency {wu['concurrency']}, first requests after the update) | {wu['requests']} | {_f(wu['throughput'], 1)} | "
        f"{_f(wu['p50_ms'])} | {_f(wu['p99_ms'])} | {wu['perf_analyzer_failed_requests']} | {wu['triton']['success']} | "
        f"{wu['triton']['failures']} | {'; '.join(s['outcome'] for s in wu['segments'])} |",
        f"| steady state | {st['requests']} | {_f(st['throughput'], 1)} | {_f(st['p50_ms'])} | {_f(st['p99_ms'])} | "
        f"{st['perf_analyzer_failed_requests']} | {st['triton']['success']} | {st['triton']['failures']} | "
        f"{st['runs']} run(s), {st['aborted_runs']} aborted at a failed request |",
        f"| steady state after the rollouts | {sa['requests']} | {_f(sa['throughput'], 1)} | {_f(sa['p50_ms'])} | {_f(sa['p99_ms'])} | "
        f"{sa['perf_analyzer_failed_requests']} | {sa['triton']['success']} | {sa['triton']['failures']} | "
        f"{sa['runs']} run(s), {sa['aborted_runs']} aborted at a failed request |",
        f"| under rollouts ({ph['seconds']:.0f} s) | {ph['requests']} | {_f(ph['throughput'], 1)} | {_f(ph['p50_ms'])} | {_f(ph['p99_ms'])} | "
        f"{ph['perf_analyzer_failed_requests']} | {ph['triton']['success']} | {ph['triton']['failures']} | "
        f"{len(ph['segments'])} run(s), {aborts} aborted at a failed request |",
        "",
        "Requests Triton refused, per 1000 it answered (its own counts): "
        + "; ".join(f"{name} {_per_k(p['triton'])}" for name, p in (("warm-up", wu), ("steady state", st), ("steady state after", sa)))
        + f"; under rollouts, inside the steps' windows {_per_k({'success': aw['triton_success'], 'failures': aw['triton_failures']})}, "
        f"outside them (the {out['seconds']} s before the first step) {_per_k(out)}. "
        + ("Refusals with no rollout going on mean the machine itself stalls the server now and then (another job shares these "
           "2 cores: see the load average); the windows' refusals are not all the rollouts' doing."
           if out["failures"] or st["triton"]["failures"] or sa["triton"]["failures"] else
           "No request was refused with no rollout going on: the windows' refusals came with the rollouts."),
        "",
        f"Under rollouts a perf_analyzer process was running {100 * ph['perf_analyzer_running_share']:.1f}% of the phase (the rest: "
        "between one run's exit and the next one's start).",
        "",
        f"Rollout steps, {r['options']['gap_s'] if r['options']['gap_s'] is not None else ('1' if r['smoke'] else '5')} s apart, "
        "during the second phase. A step's window runs from its start until the next step starts (the phase's end after the last): "
        "what a switch causes just after the call returns (the new instances' first requests, the old ones unloading) counts "
        "against it. Its requests are those perf_analyzer *sent* inside the window; the latencies of perf_analyzer runs that "
        "aborted are lost (the number of such runs is shown). Ratio: p99 / steady-state p99 "
        f"({_f(st['p99_ms'])} ms); *call*: the requests sent while the rollout call itself ran.",
        "",
        "| step | outcome | call s | window s | recommend serves after | requests sent | p50 ms | p99 ms | max ms | p99 ratio | call p99 ms (ratio) | failed (perf_analyzer) | Triton failures | aborted runs | as expected |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {x['step']} | {x['outcome']} | {_f(x['seconds'])} | {_f(x['window_end_mono'] - x['start_mono'], 1)} | {x['served_after']} | "
          f"{x['requests']} | {_f(x['p50_ms'])} | {_f(x['p99_ms'])} | {_f(x['max_ms'])} | {_f(x['p99_ratio'])} | "
          f"{_f(x['during_call']['p99_ms'])} ({_f(x['during_call']['p99_ratio'])}) | {x['perf_analyzer_failed_requests']} | "
          f"{x['triton']['failures']} | {x['lost_to_aborts']} | {'yes' if x['as_expected'] else '**NO**'} |"
          for x in r["rollouts"]],  # fmt: skip
        f"| **all rollout windows** | | | | | {aw['requests']} | {_f(aw['p50_ms'])} | {_f(aw['p99_ms'])} | {_f(aw['max_ms'])} | "
        f"{_f(aw['p99_ratio'])} | | {aw['perf_analyzer_failed_requests']} | {aw['triton_failures']} | | |",
        "",
    ]
    errs = [x for x in r["rollouts"] if x.get("error")]
    if errs:
        L += ["The rollouts' errors (RolloutError: the version was not served, the old one still is):", ""]
        L += [f"- {x['step']}: `{_first_line(x['error'])}`" for x in errs]
        L.append("")
    pa_errors = [(s["name"], e) for s in wu["segments"] + st["segments"] + sa["segments"] + ph["segments"] for e in (s["errors"] or [])]
    if pa_errors:
        L += ["perf_analyzer's failed requests (it aborts the run at the first one per thread):", ""]
        L += [f"- {name}: `{e[:300]}`" for name, e in pa_errors]
        L.append("")
    else:
        L += ["perf_analyzer saw no failed request in any run.", ""]
    L += [
        "Served versions after each step (Triton's repository index, READY versions; `pinned`: recommend's version policy):",
        "",
        *[f"- after {s['after']}: {json.dumps(s['loaded'], sort_keys=True)}, pinned {s['pinned']}" for s in r["served"]],
        "",
        "perf_analyzer runs:",
        "",
        *[f"- {s['name']}: {s['requests']} requests (+{s['warmup']} warm-up), {s['outcome']}, {s['measured']} measured, {s['seconds']} s"
          + (f", {s['throughput']}/s" if s["throughput"] else "")
          for s in wu["segments"] + st["segments"] + sa["segments"] + ph["segments"]],  # fmt: skip
        "",
    ]
    if r["server"]["supervisor_log"]:
        L += ["The supervisor acted during the run (monotonic time, what):", "", *[f"- {x}" for x in r["server"]["supervisor_log"]], ""]
    L += [
        "## Rerun",
        "",
        "The benchmark (the work folder is kept: the private repository and state as the run left them, the admin key, "
        "perf_analyzer's input data, its logs and CSVs under `raw/`), then each step as the run did it (the update on fresh copies "
        "of the repository and state; the rollouts and perf_analyzer against a server on them, `freshrec serve` with the admin "
        "key; the ports below were chosen free for this run; `freshrec bench perf-analyzer` prints the prefix that runs "
        "perf_analyzer here):",
        "",
        "```",
        *r["commands"],
        "```",
        "",
    ]
    return "\n".join(L)


def main_print(report: dict[str, Any]) -> None:
    for t in report["targets"]:
        measured = t["measured"]
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {'-' if measured is None else measured}")
    if not report["as_expected"]:
        print("error: a rollout step did not end as expected (see the report)", file=sys.stderr)

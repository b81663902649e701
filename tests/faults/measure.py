"""The figures of docs/reliability.md, measured against a real supervised tritonserver:

    freshrec build --tiny --max-users 40 --out build/tiny --repository build/tiny/repo
    python -m tests.faults.measure --build build/tiny --repository build/tiny/repo/embedded [--only kill,loads,...]

Prints one JSON object per scenario (kill, loads, overload, storm, sigterm); each runs on its own
server over a private copy of the build's state. Run it on an otherwise idle machine (nice is fine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from freshrec.client.errors import Unavailable, from_triton
from freshrec.contract import served_models
from freshrec.server_ext.launcher import ServerOptions, find_free_ports
from freshrec.server_ext.supervisor import Supervisor, stubs_of
from freshrec.store import open_store
from freshrec.store.sqlite import copy_sqlite
from tests.faults.conftest import private_repository, status
from tests.faults.traffic import Load, burst, metric, percentile


def start(build: Path, repository: Path, work: Path, engine: str = "inprocess") -> Supervisor:
    copy_sqlite(build / "state.db", work / "state.db")
    g, h, m = find_free_ports(3)
    env = {"FRESHREC_STATE": f"sqlite:///{work / 'state.db'}", "FRESHREC_ENGINE": engine}
    opts = ServerOptions(model_repository=repository, grpc_port=g, http_port=h, metrics_port=m, env=env)
    sup = Supervisor(opts, served_models(engine), health_port=0, work_dir=work / "triton", log=lambda _m: None)
    sup.start()
    store = open_store(env["FRESHREC_STATE"])
    sup.users = sorted(store.user_ids())[:40]  # type: ignore[attr-defined]
    store.close()
    return sup


def ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1e3, 1)


def kill(build: Path, repository: Path, work: Path, kills: int = 3) -> dict:
    sup = start(build, repository, work)
    sup.retire_after_s = 2.0
    rows = []
    with Load(sup.server.grpc_url, sup.users, threads=4) as load:
        time.sleep(3)
        for _ in range(kills):
            stub = next(s for s in stubs_of(sup.server.pid) if s.instance == "recommend_0_0")
            t0 = time.monotonic()
            os.kill(stub.pid, signal.SIGKILL)
            unready = restored = None
            while time.monotonic() - t0 < 90 and restored is None:
                ok = status(f"{sup.health_url}/ready") == 200
                unready = unready or (None if ok else time.monotonic())
                restored = time.monotonic() if ok and unready else None
                time.sleep(0.02)
            time.sleep(5)
            window = load.between(t0 - 2, t0 + 5 + (restored or t0) - t0)
            in_flight = [r for r in window if r.start < t0 < r.end]
            failed = [r for r in window if r.code != "OK"]
            rows.append({"unready_after_s": round(unready - t0, 2), "restored_after_s": round(restored - t0, 2),
                         "in_flight_at_kill": len(in_flight), "failed": len(failed),
                         "failed_after_restore": len([r for r in failed if r.start >= restored]),
                         "failed_by_message": _count(f"{r.code}: {r.message}" for r in failed),
                         "requests_in_window": len(window)})  # fmt: skip
    t = time.monotonic()
    rc = sup.drain()
    return {"kills": rows, "drain_s": round(time.monotonic() - t, 2), "drain_rc": rc, "requests": len(load.records)}


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def loads(build: Path, repository: Path, work: Path, tries: int = 20, retrying: bool = True) -> dict:
    """Failing loads under freshrec's own (retrying) client; `retrying=False` for raw calls."""
    out = {}
    for kind in ("new-version", "reload"):
        repo = private_repository(repository, work / f"repo-{kind}")
        sup = start(build, repo, work / kind)
        admin = httpclient.InferenceServerClient(sup.server.http_url, network_timeout=120, connection_timeout=120)
        refused, seconds = 0, []
        with Load(sup.server.grpc_url, sup.users, threads=2, retrying=retrying) as load:
            time.sleep(1)
            for attempt in range(tries):
                if kind == "new-version" and not (repo / "recommend" / "2").exists():
                    shutil.copytree(repo / "recommend" / "1", repo / "recommend" / "2")
                if kind == "reload":
                    graph = repo / "user_tower" / "1" / "model.onnx"
                    if graph.exists():
                        graph.rename(graph.with_suffix(".gone"))
                    future = time.time() + attempt + 1
                    os.utime(repo / "recommend" / "1" / "model.py", (future, future))
                t0 = time.monotonic()
                try:
                    admin.load_model("recommend", headers=sup.server.admin_http_headers)
                except InferenceServerException:
                    refused += 1
                seconds.append(time.monotonic() - t0)
                if not sup.server.is_alive():
                    break
        out[kind] = {"tries": tries, "refused": refused, "server_alive": sup.server.is_alive(),
                     "ready": status(f"{sup.health_url}/ready") == 200, "requests": len(load.records),
                     "failed": len([r for r in load.records if r.code != "OK"]), "load_call_s_p50": round(percentile(seconds, 50), 1),
                     "failed_by_message": _count(f"{r.code}: {r.message.split('] ', 1)[-1][:60]}" for r in load.records if r.code != "OK")}  # fmt: skip
        admin.close()
        sup.stop()
    return out


def overload(build: Path, repository: Path, work: Path, seconds: float = 10.0) -> dict:
    sup = start(build, repository, work)
    url, users = sup.server.grpc_url, sup.users
    steady, _ = burst(url, users, 1, seconds)
    out = {"steady_c1": _lat(steady, seconds)}
    for label, backoff in (("c64_backoff_20ms", 0.02), ("c64_backoff_100ms", 0.1)):
        records, _ = burst(url, users, 64, seconds + 1, backoff_s=backoff)
        start_t = min(r.start for r in records) + 1
        out[label] = _lat([r for r in records if r.start >= start_t], seconds)
        time.sleep(1)
    sup.stop()
    return out


def _lat(records: list, seconds: float) -> dict:
    ok = [r.latency_s for r in records if r.code == "OK"]
    bad = [r.latency_s for r in records if r.code != "OK"]
    return {"requests": len(records), "admitted": len(ok), "admitted_per_s": round(len(ok) / seconds, 1),
            "admitted_p50_ms": ms(ok, 50), "admitted_p99_ms": ms(ok, 99), "refused": len(bad),
            "refused_p50_ms": ms(bad, 50), "refused_p99_ms": ms(bad, 99),
            "codes": _count(f"{r.code}: {r.message.split('] ', 1)[-1][:40]}" for r in records if r.code != "OK")}  # fmt: skip


def storm(build: Path, repository: Path, work: Path, seconds: float = 10.0, storms: int = 3) -> dict:
    sup = start(build, repository, work)
    url, users = sup.server.grpc_url, sup.users
    steady, _ = burst(url, users, 1, seconds)
    rows = []
    for _ in range(storms):
        before = metric(sup.server.metrics_url, "freshrec_stage_latency_seconds_count", model="recommend", stage="store")
        main, probe = burst(url, users, 64, seconds, deadline_s=0.05, backoff_s=0.0, probe_deadline_s=5.0)
        computed = metric(sup.server.metrics_url, "freshrec_stage_latency_seconds_count", model="recommend", stage="store") - before
        time.sleep(0.5)
        after, _ = burst(url, users, 1, 2.0)
        rows.append({"storm_requests": len(main), "storm_ok": len([r for r in main if r.code == "OK"]), "computed": int(computed),
                     "probe": _lat(probe, seconds), "after_ok": f"{len([r for r in after if r.code == 'OK'])}/{len(after)}"})  # fmt: skip
    out = {"steady_c1": _lat(steady, seconds), "storms": rows, "cancelled": _count_cancelled(sup), "alive": sup.server.is_alive()}
    sup.stop()
    return out


def _count_cancelled(sup: Supervisor) -> dict:
    return {stage: metric(sup.server.metrics_url, "freshrec_cancelled_total", model="recommend", stage=stage)
            for stage in ("start", "store", "user_tower", "retrieval")}  # fmt: skip


def sigterm(build: Path, repository: Path, work: Path, threads: int = 8) -> dict:
    sup = start(build, repository, work)
    with Load(sup.server.grpc_url, sup.users, threads=threads, deadline_s=10) as load:
        time.sleep(3)
        t0 = time.monotonic()
        rc = sup.drain()
        stopped = time.monotonic()
        time.sleep(1)
    in_flight = [r for r in load.records if r.start < t0 < r.end]
    later = [r for r in load.records if r.start >= t0]
    kinds = _count(
        "OK" if r.code == "OK" else f"{r.code} -> {type(from_triton(InferenceServerException(r.message, status='StatusCode.' + r.code))).__name__}"
        for r in later
    )
    unavailable = all(r.code == "OK" or isinstance(from_triton(InferenceServerException(r.message, status="StatusCode." + r.code)), Unavailable) for r in later)
    return {"drain_s": round(stopped - t0, 2), "rc": rc, "in_flight": len(in_flight), "in_flight_failed": len([r for r in in_flight if r.code != "OK"]),
            "after_signal": kinds, "every_later_failure_unavailable": unavailable}  # fmt: skip


SCENARIOS = {"kill": kill, "loads": loads, "overload": overload, "storm": storm, "sigterm": sigterm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, required=True, help="a build folder (state.db)")
    parser.add_argument("--repository", type=Path, required=True, help="its embedded repository")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    ns = parser.parse_args(argv)
    for name in ns.only.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"freshrec-measure-{name}-"))
        t0 = time.monotonic()
        result = SCENARIOS[name](ns.build.resolve(), ns.repository.resolve(), work)
        print(json.dumps({"scenario": name, "seconds": round(time.monotonic() - t0), **result}), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Side-by-side latency of the state stores through the served gRPC API.

    freshrec bench stores [--build build] [--repository model_repository/embedded] [--calls 200] [--out docs/benchmarks]

Starts a private redis-server (AOF, appendfsync always) and two tritonservers on the same model
repository, one over a copy of the build's SQLite state and one over the same state copied into
Redis, then sends sequential `ingest_events` (one event) and `recommend` calls, alternating which
server goes first so both see the same machine load. Writes docs/benchmarks/state_stores.{md,json}.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from freshrec.offline.machine import cpu_name


def run(build: Path, repository: Path, calls: int, out: Path) -> dict:
    from freshrec.client import EventIn, FreshrecClient
    from freshrec.server_ext.launcher import find_free_ports, start_on_free_ports
    from freshrec.store.redis_store import RedisStore
    from freshrec.store import copy_state
    from freshrec.store.sqlite import SQLiteStore, copy_sqlite

    shown = build
    build, repository = build.resolve(), repository.resolve()
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-stores-"))
    state = work / "state.db"
    copy_sqlite(build / "state.db", state)
    (port,) = find_free_ports(1)
    (work / "redis").mkdir()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work / "redis"),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    servers = []
    try:
        time.sleep(0.5)
        redis_url = f"redis://127.0.0.1:{port}/0"
        sqlite_store = SQLiteStore(state)
        users = sorted(sqlite_store.user_ids()[:50])
        items, _ = sqlite_store.items_since(0)
        target = RedisStore(redis_url)
        copy_state(sqlite_store, target)
        target.close()
        sqlite_store.close()
        clients = {}
        for name, url in (("sqlite", f"sqlite:///{state}"), ("redis", redis_url)):
            server = start_on_free_ports(repository, env={"FRESHREC_STATE": url}, ready_timeout=180)
            servers.append(server)
            clients[name] = FreshrecClient(server.grpc_url, timeout_s=10.0)
        lat = {f"{name}/{op}": [] for name in clients for op in ("ingest_events", "recommend")}
        warmup = 20
        for i in range(warmup + calls):
            for name in list(clients) if i % 2 == 0 else list(clients)[::-1]:
                c, user = clients[name], users[i % len(users)]
                t0 = time.perf_counter()
                c.ingest([EventIn(user, items[i % len(items)].item_id, "click", None, None, f"bench-{name}-{i}")])
                t1 = time.perf_counter()
                c.recommend(user, k=10)
                t2 = time.perf_counter()
                if i >= warmup:
                    lat[f"{name}/ingest_events"].append((t1 - t0) * 1e3)
                    lat[f"{name}/recommend"].append((t2 - t1) * 1e3)
    finally:
        for s in servers:
            s.stop()
        redis.kill()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)
    table = {k: {"p50_ms": round(float(np.percentile(v, 50)), 2), "p99_ms": round(float(np.percentile(v, 99)), 2),
                 "mean_ms": round(float(np.mean(v)), 2), "calls": len(v)} for k, v in lat.items()}  # fmt: skip
    machine = {"cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(), "python": platform.python_version()}
    report = {"latency": table, "machine": machine, "build": str(shown), "date": time.strftime("%Y-%m-%d")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "state_stores.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# State stores side by side: SQLite vs Redis",
        "",
        f"`freshrec bench stores` on {report['date']}: {machine['cpus']} cores ({machine['cpu']}), "
        f"{machine['platform']}, Python {machine['python']}; build `{shown}`. One tritonserver per store, both running; "
        f"{calls} sequential gRPC calls each after {warmup} warm-up calls, alternating which server goes first. "
        "Redis: local redis-server, `appendonly yes`, `appendfsync always`. SQLite: WAL, synchronous=FULL.",
        "",
        "| store / call | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|",
        *[f"| {k} | {v['p50_ms']} | {v['p99_ms']} | {v['mean_ms']} |" for k, v in table.items()],
        "",
    ]
    (out / "state_stores.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return report

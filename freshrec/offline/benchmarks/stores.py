"""Side-by-side latency of the state stores through the served gRPC API.

    freshrec bench stores [--build build] [--repository model_repository/embedded] [--calls 200] [--out docs/benchmarks]

Starts a private redis-server (AOF, appendfsync always), a private Redis Cluster (3 primaries + 3
replicas, the same settings) and three tritonservers on the same model repository, over a copy of
the build's SQLite state, the same state copied into Redis and into the cluster, then sends
sequential `ingest_events` (one event) and `recommend` calls, rotating which server goes first so
all see the same machine load; then the same number of `add_events` straight on each Redis store
(the store's own cost, without Triton). Writes docs/benchmarks/state_stores.{md,json}.
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


def _redis_args(port: int, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--appendonly", "yes",
            "--appendfsync", "always", "--save", "", "--repl-diskless-sync-delay", "0"]  # fmt: skip


def start_redis_cluster(work: Path) -> tuple[str, list[subprocess.Popen]]:
    """3 primaries + 3 replicas on loopback (ports <= 55535: the bus port is port + 10000), joined
    by `redis-cli --cluster create`; returns the `redis+cluster://` URL once every primary has a
    replica in sync."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    ports: list[int] = []
    while len(ports) < 6:
        p = random.randint(20000, 55535)
        if p not in ports and free(p) and free(p + 10000):
            ports.append(p)
    procs = [subprocess.Popen(_redis_args(p, work / str(p)) + ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{p}.conf"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]  # fmt: skip

    def cli(port: int, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=60).stdout

    deadline = time.monotonic() + 60
    while not all("PONG" in cli(p, "ping") for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError("redis cluster nodes did not start")
        time.sleep(0.1)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "1", "--cluster-yes"],
                   capture_output=True, check=True, timeout=60)  # fmt: skip
    while not all("cluster_state:ok" in cli(p, "cluster", "info") for p in ports) or sum(
        "state=online" in cli(p, "info", "replication") for p in ports
    ) < 3:
        if time.monotonic() > deadline:
            raise RuntimeError("redis cluster not healthy")
        time.sleep(0.1)
    return f"redis+cluster://127.0.0.1:{ports[0]}", procs


def _direct_ingest(url: str, users: list[str], items: list, calls: int, tag: str, one_script: bool | None = None) -> list[float]:
    """ms per `add_events` of one event with an id, straight on the store (`one_script` False: a
    standalone store made to reserve and write in two steps, as on a cluster)."""
    from freshrec.store import Event, open_store

    store = open_store(url)
    if one_script is not None:
        store.one_script = one_script
    out = []
    for i in range(20 + calls):
        t0 = time.perf_counter()
        store.add_events([Event(users[i % len(users)], items[i % len(items)].item_id, "click", time.time(), event_id=f"direct-{tag}-{i}")])
        if i >= 20:
            out.append((time.perf_counter() - t0) * 1e3)
    store.close()
    return out


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
    redis = [subprocess.Popen(_redis_args(port, work / "redis"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    servers = []
    try:
        cluster_url, cluster = start_redis_cluster(work / "cluster")
        redis += cluster
        redis_url = f"redis://127.0.0.1:{port}/0"
        sqlite_store = SQLiteStore(state)
        users = sorted(sqlite_store.user_ids()[:50])
        items, _ = sqlite_store.items_since(0)
        for url in (redis_url, cluster_url):
            target = RedisStore(url)
            copy_state(sqlite_store, target)
            target.close()
        sqlite_store.close()
        clients = {}
        for name, url in (("sqlite", f"sqlite:///{state}"), ("redis", redis_url), ("redis-cluster", cluster_url)):
            server = start_on_free_ports(repository, env={"FRESHREC_STATE": url}, ready_timeout=180)
            servers.append(server)
            clients[name] = FreshrecClient(server.grpc_url, timeout_s=10.0)
        lat = {f"{name}/{op}": [] for name in clients for op in ("ingest_events", "recommend")}
        warmup = 20
        names = list(clients)
        for i in range(warmup + calls):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                c, user = clients[name], users[i % len(users)]
                t0 = time.perf_counter()
                c.ingest([EventIn(user, items[i % len(items)].item_id, "click", None, None, f"bench-{name}-{i}")])
                t1 = time.perf_counter()
                c.recommend(user, k=10)
                t2 = time.perf_counter()
                if i >= warmup:
                    lat[f"{name}/ingest_events"].append((t1 - t0) * 1e3)
                    lat[f"{name}/recommend"].append((t2 - t1) * 1e3)
        for s in servers:
            s.stop()
        servers = []
        direct = (("redis", redis_url, None), ("redis (two steps)", redis_url, False), ("redis-cluster", cluster_url, None))
        for k in range(2):  # straight on the stores, alternating which goes first
            for name, url, one_script in direct[:: 1 if k == 0 else -1]:
                lat.setdefault(f"{name}/add_events (direct)", []).extend(
                    _direct_ingest(url, users, items, calls // 2, f"{name}{k}", one_script))
    finally:
        for s in servers:
            s.stop()
        for proc in redis:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    table = {k: {"p50_ms": round(float(np.percentile(v, 50)), 2), "p99_ms": round(float(np.percentile(v, 99)), 2),
                 "mean_ms": round(float(np.mean(v)), 2), "calls": len(v)} for k, v in lat.items()}  # fmt: skip
    machine = {"cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(), "python": platform.python_version()}
    ratio = {op: round(table[f"redis-cluster/{op}"]["p99_ms"] / table[f"redis/{op}"]["p99_ms"], 2)
             for op in ("ingest_events", "add_events (direct)")}  # fmt: skip
    one_script = {q: round(table["redis/add_events (direct)"][f"{q}_ms"] / table["redis (two steps)/add_events (direct)"][f"{q}_ms"], 2)
                  for q in ("p50", "p99")}  # fmt: skip
    report = {"latency": table, "cluster_to_standalone_p99": ratio, "standalone_one_script_to_two_steps": one_script, "machine": machine, "build": str(shown), "date": time.strftime("%Y-%m-%d")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "state_stores.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# State stores side by side: SQLite vs Redis vs Redis Cluster",
        "",
        f"`freshrec bench stores` on {report['date']}: {machine['cpus']} cores ({machine['cpu']}), "
        f"{machine['platform']}, Python {machine['python']}; build `{shown}`. One tritonserver per store, all running; "
        f"{calls} sequential gRPC calls each after {warmup} warm-up calls, rotating which server goes first; then {calls} "
        "`add_events` (one event with an id) straight on each Redis store, alternating halves. "
        "Redis: local redis-server, `appendonly yes`, `appendfsync always`. Redis Cluster: 3 primaries + 3 replicas on the same "
        "machine, same settings; every write also waits (`WAIT 1`) for its replica. Both Redis stores use the hash-tagged "
        "layout; on the cluster an ingest reserves arrival numbers in the global slot, then writes in the user's slot (two "
        "round trips, two fsyncs), on standalone Redis both are one script (one round trip, one fsync); the "
        "`redis (two steps)` row makes the standalone store take the cluster's two steps, measured beside it. "
        "SQLite: WAL, synchronous=FULL.",
        "",
        "| store / call | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|",
        *[f"| {k} | {v['p50_ms']} | {v['p99_ms']} | {v['mean_ms']} |" for k, v in table.items()],
        "",
        "p99 of the cluster over standalone Redis: " + ", ".join(f"{op} {r}x" for op, r in ratio.items()) + " (target: <= 1.5x).",
        "",
        f"Standalone Redis, one script over two steps (add_events direct): p50 {one_script['p50']}x, p99 {one_script['p99']}x.",
        "",
    ]
    (out / "state_stores.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return report

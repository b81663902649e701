"""`recommend` with and without the explanation output, side by side, through the served gRPC API.

    freshrec bench explain [--build build] [--repository model_repository/embedded] [--calls 300] [--out docs/benchmarks]

One tritonserver over a copy of the build's state. Each round asks, for the same user, once
without the explanation (the client names item_ids and scores) and once with it (it names
explanation too), alternating which goes first so both see the same machine load. Sequential
calls (concurrency 1), client-side round trips. Also records the build's topic fit time
(build.json). Writes docs/benchmarks/explain.{md,json}.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from freshrec.offline.machine import machine_info


def _stats(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(np.mean(ms)), 2), "calls": len(ms)}  # fmt: skip


def run(build: Path, repository: Path, calls: int, out: Path, warmup: int = 30) -> dict:
    from freshrec.client import FreshrecClient
    from freshrec.server_ext.launcher import start_on_free_ports
    from freshrec.store.sqlite import SQLiteStore, copy_sqlite

    shown = build
    build, repository = build.resolve(), repository.resolve()
    built = json.loads((build / "build.json").read_text())
    if "topics" not in built:
        raise SystemExit(f"{shown}: this build has no topic model (built before topics); run `freshrec build` again")
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-explain-"))
    state = work / "state.db"
    copy_sqlite(build / "state.db", state)
    store = SQLiteStore(state)
    users = sorted(store.user_ids())
    store.close()
    rng = np.random.default_rng(0)
    lat: dict[str, list[float]] = {"without": [], "with": []}
    sizes: list[int] = []
    server = start_on_free_ports(repository, env={"FRESHREC_STATE": f"sqlite:///{state}"}, ready_timeout=300)
    try:
        with FreshrecClient(server.grpc_url, timeout_s=10.0) as client:
            for i in range(warmup + calls):
                user = users[int(rng.integers(len(users)))]
                order = ("without", "with") if i % 2 == 0 else ("with", "without")
                for kind in order:
                    t0 = time.perf_counter()
                    rec = client.recommend(user, k=10, explain=kind == "with")
                    ms = (time.perf_counter() - t0) * 1e3
                    if i >= warmup:
                        lat[kind].append(ms)
                        if kind == "with":
                            sizes.append(len(json.dumps(rec.explanation)))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = {k: _stats(v) for k, v in lat.items()}
    paired = np.array(lat["with"]) - np.array(lat["without"])
    report = {
        "latency": table,
        "ratio_p50": round(table["with"]["p50_ms"] / table["without"]["p50_ms"], 3),
        "ratio_mean": round(table["with"]["mean_ms"] / table["without"]["mean_ms"], 3),
        "paired_difference_ms": {"median": round(float(np.median(paired)), 2), "mean": round(float(paired.mean()), 2)},
        "explanation_bytes": {"median": int(np.median(sizes)), "max": int(max(sizes))},
        "topics": {k: built["topics"][k] for k in ("n_topics", "vocabulary", "items", "fit_seconds", "transform_seconds")},
        "build": str(shown), "users": len(users), "warmup": warmup,
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    report["load_average_at_end"] = list(os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    m, t = report["machine"], report["topics"]
    lines = [
        "# recommend with and without the explanation output",
        "",
        f"`freshrec bench explain` on {report['date']}: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB, "
        f"{m['os']}, Python {m['python']}, tritonserver {m['tritonserver']}, load average at the start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}; build `{shown}` ({report['users']} users). One tritonserver "
        f"(embedded repository, SQLite state); {calls} rounds after {warmup} warm-up rounds, each one user (drawn at random) "
        "asked for k=10 without and with the `explanation` output, alternating which goes first; sequential gRPC calls "
        "through `FreshrecClient` (client-side round trips).",
        "",
        "| recommend | p50 ms | p90 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|",
        *[f"| {k} explanation | {v['p50_ms']} | {v['p90_ms']} | {v['p99_ms']} | {v['mean_ms']} |" for k, v in table.items()],
        "",
        f"With / without: {report['ratio_p50']}x at p50, {report['ratio_mean']}x in the mean; per round the explanation "
        f"added {report['paired_difference_ms']['median']} ms (median of the paired differences). The explanation JSON "
        f"is {report['explanation_bytes']['median']} bytes (median). Without it, nothing of it is computed (the "
        "`explain` stage's counter stays at 0: tests/server_ext/test_explain.py).",
        "",
        f"Topic model fit at build time: LDA with {t['n_topics']} topics over {t['items']} items ({t['vocabulary']} words) "
        f"in {t['fit_seconds']:.1f} s, the items' mixtures in {t['transform_seconds']:.1f} s (`build.json`, `topics`).",
        "",
    ]
    (out / "explain.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return report

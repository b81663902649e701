"""The tuning study (`--compare`): repository variants side by side, one server each, the same
runs rotating through them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from freshrec.export.repository import read_config, write_config
from freshrec.offline.benchmarks.serving.plan import BenchOptions, Spec
from freshrec.offline.benchmarks.serving.runs import run_one
from freshrec.offline.benchmarks.serving.server import Server, prewarm, private_state


TOWERS = ("text_encoder", "item_tower", "user_tower", "reranker")


def variant_repository(base: Path, dest: Path, queue_delay_us: int | None = None, ort_threads: int | None = None,
                       tower_instances: int | None = None) -> Path:  # fmt: skip
    """A copy of `base` (model files symlinked) with the towers' config.pbtxt changed."""
    if dest.exists():
        shutil.rmtree(dest)
    for model_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        out = dest / model_dir.name
        for src in model_dir.rglob("*"):
            target = out / src.relative_to(model_dir)
            if src.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif src.name != "config.pbtxt":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(src.resolve())
        cfg = read_config(model_dir)
        if model_dir.name in TOWERS:
            if queue_delay_us is not None:
                cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
            if ort_threads is not None and "ort_threads" in cfg.parameters:
                cfg.parameters["ort_threads"].string_value = str(ort_threads)
            if tower_instances is not None:
                for group in cfg.instance_group:
                    group.count = tower_instances
        write_config(out, cfg)
    return dest


TUNING_VARIANTS = {
    "bls_delay_200": "the towers behind BLS requests (FRESHREC_ENGINE=bls), dynamic batching max_queue_delay_microseconds 200: "
                     "the defaults before this study",
    "bls": "bls with the towers' max_queue_delay_microseconds 0 (the default now)",
    "inprocess_delay_200": "the towers' ONNX files run by onnxruntime inside the pipeline's own process (FRESHREC_ENGINE=inprocess), "
                           "towers' delay 200 (it matters only for direct tower requests)",
    "inprocess": "inprocess with delay 0: the repository as `freshrec build` writes it now (embedded flavour, engine \"auto\")",
}


def compare(opts: BenchOptions, pa: list[str], repo: Path, state_url: str, inputs: dict, work: Path, raw: Path,
            servers: list[Server], log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The variants of TUNING_VARIANTS side by side: one server per variant, all up at once; the
    same runs (recommend at concurrency 1 and 4; the user tower, the reranker and upsert_items at 1)
    rotate through the variants round by round so all see the same machine load; medians over the
    rounds, ratios against the first variant."""
    index_env = {"FRESHREC_INDEX": opts.index, "FRESHREC_INDEX_CACHE": str(work / "graphs")} if opts.index else {}
    one = {"FRESHREC_THREADS": "1"}
    delay0 = variant_repository(repo, work / "repo-delay0", queue_delay_us=0)
    delay200 = variant_repository(repo, work / "repo-delay200", queue_delay_us=200)
    variants = {
        "bls_delay_200": (delay200, {**one, "FRESHREC_ENGINE": "bls"}),
        "bls": (delay0, {**one, "FRESHREC_ENGINE": "bls"}),
        "inprocess_delay_200": (delay200, {**one, "FRESHREC_ENGINE": "inprocess"}),
        "inprocess": (delay0, {**one, "FRESHREC_ENGINE": "inprocess"}),
    }
    base_name = next(iter(variants))
    log("== tuning study: " + ", ".join(variants) + f" ({opts.compare_rounds} rotating rounds)")
    running = {}
    for name, (path, env) in variants.items():
        st = private_state(state_url, work / f"state-{name}.db")
        srv = Server(name, path, st, {**index_env, **env})
        servers.append(srv)
        srv.start(work)
        running[name] = srv
    users = json.loads(inputs["recommend"][1].read_text())["data"]
    for srv in running.values():
        prewarm(srv, [u["user_id"][0] for u in users[:8]], log=log)
    n = opts.requests or (20 if opts.smoke else 200)
    cases = [Spec("recommend", "recommend", (1, 4), n, 10)] + [Spec(t, t, (1,), n, 10) for t in ("user_tower", "reranker") if t in inputs]
    if "upsert_items" in inputs:  # a write: every variant has its own state copy; later rounds update the same items
        cases.append(Spec("upsert_items", "upsert_items", (1,), min(n, 100), 0))
    rounds: dict[str, dict[str, list[dict]]] = {}
    names = list(running)
    for r in range(opts.compare_rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for spec in cases:
            for c in spec.concurrency:
                for name in order:
                    path = inputs[spec.label].get(c) or inputs[spec.label][min(inputs[spec.label])]
                    res = run_one(pa, spec, c, path, running[name], raw / "compare", tag=f".{name}.r{r}", log=log)
                    rounds.setdefault(f"{spec.label}.c{c}", {}).setdefault(name, []).append(res)
    table = {}
    for case, by in rounds.items():
        model = case.rsplit(".c", 1)[0]
        table[case] = {}
        for name, runs in by.items():
            qo = [x["server"].get(model, {}).get("queue_plus_overhead_ms", math.nan) for x in runs]
            comp = [x["server"].get(model, {}).get("compute_infer_ms", math.nan) for x in runs]
            table[case][name] = {
                "p50_ms": float(np.median([x["p50_ms"] for x in runs])),
                "p99_ms": float(np.median([x["p99_ms"] for x in runs])),
                "throughput": float(np.median([x["throughput"] for x in runs])),
                "queue_plus_overhead_ms": float(np.median(qo)),
                "compute_infer_ms": float(np.median(comp)),
                "rounds": len(runs),
            }
        base = table[case][base_name]
        table[case]["ratios_vs_before"] = {
            name: {k: (v[k] / base[k] if base[k] else math.nan) for k in ("p50_ms", "p99_ms", "throughput", "queue_plus_overhead_ms")}
            for name, v in list(table[case].items()) if name != base_name
        }  # fmt: skip
    for srv in running.values():
        srv.stop()
    return {"variants": dict(TUNING_VARIANTS), "baseline": base_name, "rounds": opts.compare_rounds, "table": table}

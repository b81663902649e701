"""`freshrec bench serving`: one benchmark run from the build to runs/<name>.json, then the report
re-assembled from every run."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from freshrec.offline.benchmarks.serving.compare import compare
from freshrec.offline.benchmarks.serving.inputs import Dataset, generate_inputs
from freshrec.offline.benchmarks.serving.markdown import _f
from freshrec.offline.benchmarks.serving.plan import WRITE_MODELS, BenchOptions, plan, run_name
from freshrec.offline.benchmarks.serving.report import assemble
from freshrec.offline.benchmarks.serving.runs import run_one
from freshrec.offline.benchmarks.serving.server import Server, prewarm, private_state, served_deploy, server_memory
from freshrec.offline.benchmarks.serving.stats import served_index_recall
from freshrec.offline.machine import machine_info


def _resolve_build(opts: BenchOptions, work: Path, log: Callable[[str], None]) -> tuple[Path, Path]:
    build = opts.build.resolve()
    if opts.smoke and not (build / "build.json").exists():
        from freshrec.config import ModelConfig
        from freshrec.training.build import BuildOptions
        from freshrec.training.build import build as run_build

        log(f"== smoke: no build at {opts.build}; building a tiny one (40 users) in {work / 'tiny'}")
        report = run_build(BuildOptions(out=work / "tiny" / "build", repository=work / "tiny" / "repo", max_users=40), ModelConfig.tiny())
        return (work / "tiny" / "build").resolve(), Path(report["repositories"]["embedded"]).resolve()
    if not (build / "build.json").exists():
        raise FileNotFoundError(f"no build at {build} (build.json missing); run `freshrec build` first")
    if opts.repository is not None:
        repo = opts.repository.resolve()
    else:
        repo = Path(json.loads((build / "build.json").read_text())["repositories"]["embedded"]).resolve()
    if not (repo / "recommend" / "config.pbtxt").exists():
        raise FileNotFoundError(f"no model repository at {repo}")
    return build, repo


def bench(opts: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs one benchmark (the main one, or one catalog size), writes runs/<name>.json and
    re-assembles serving.md / summary.json from every run in `opts.out`."""
    from freshrec.offline.benchmarks.perf_analyzer import perf_analyzer_command, perf_analyzer_version

    t_start = time.time()
    machine = machine_info()  # load average at the start included
    pa = perf_analyzer_command()  # fails loudly (no network, bad checksum) before anything starts
    work = (opts.work or Path(tempfile.mkdtemp(prefix="freshrec-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = opts.out.resolve()
    name = run_name(opts)
    inputs_dir, raw_dir = out / "inputs" / name, out / "raw" / name
    for d in (inputs_dir, raw_dir):  # stale files of an earlier run would mislead a reader
        shutil.rmtree(d, ignore_errors=True)
    servers: list[Server] = []
    try:
        build, repo = _resolve_build(opts, work, log)
        source_state = opts.state or json.loads((build / "build.json").read_text())["state"]
        catalog = None
        specs = plan(opts.smoke, opts.only, opts.concurrency, opts.requests)
        if opts.catalog_items:
            from freshrec.offline.benchmarks.catalog_scale import scaled_state

            if any(s.model in WRITE_MODELS for s in specs):
                raise ValueError("--catalog-items benches the read path (recommend); leave ingest/upsert to the main run")
            dest = work / f"state-{opts.catalog_items}.db"
            t0 = time.time()
            if Path(str(dest) + ".json").exists() and dest.exists():  # complete: scaled_state writes the .json last
                log(f"== reusing the catalog of {opts.catalog_items:,} items at {dest}")
                state_url = f"sqlite:///{dest}"
            else:
                log(f"== catalog of {opts.catalog_items:,} items (freshrec.offline.benchmarks.catalog_scale.scaled_state) -> {dest}")
                state_url = scaled_state(build, opts.catalog_items, dest, log)
            info = json.loads(Path(str(dest) + ".json").read_text()) if Path(str(dest) + ".json").exists() else {}
            catalog = {"items": opts.catalog_items, "seconds_to_prepare": round(time.time() - t0, 1), "scaled_state": info}
        else:
            state_url = private_state(source_state, work / "state.db")
        token = time.strftime("%Y%m%d%H%M%S")
        log(f"== input data from {state_url} -> {inputs_dir}")
        ds = Dataset.load(state_url, repo)
        inputs = generate_inputs(ds, repo, specs, inputs_dir, token, opts.seed)
        n_items, warm_users = len(ds.items), ds.users[:8]
        del ds
        from freshrec.index import resolve_kind

        env = {"FRESHREC_INDEX": opts.index} if opts.index else {}
        served = served_deploy(repo, env)
        index_setting = served.index
        index = resolve_kind(index_setting, n_items)  # what the (CPU) server searches with at this size
        # The servers' index cache lives in the work folder: a first start writes the matrices and
        # builds the graph once (the other instances map them); a reused --work folder starts from
        # the saved ones. "off": each instance keeps its own copies.
        graphs = work / "graphs"
        graphs_saved = opts.index_cache != "off" and graphs.exists() and any(graphs.glob("hnsw-*.usearch"))
        if opts.index_cache == "off":
            env["FRESHREC_INDEX_CACHE"] = "off"
        else:
            if graphs_saved:
                log(f"   index cache {graphs} holds saved graphs: ready time is a load, not a build")
            env["FRESHREC_INDEX_CACHE"] = str(graphs)
        main = Server(name, repo, state_url, env)
        servers.append(main)
        log(f"== tritonserver on {repo} (state {state_url}, index {index})")
        t0 = time.time()
        # The recommend instances load the catalog (and build an HNSW graph) before the server is ready.
        main.start(work, ready_timeout=300.0 + (opts.catalog_items or 0) / 500)
        ready_s = time.time() - t0
        log(f"   ready in {ready_s:.0f}s; perf_analyzer: {' '.join(pa)}")
        warm_s = prewarm(main, warm_users, log=log) if any(s.model == "recommend" for s in specs) else 0.0
        memory = server_memory(main)
        recall = served_index_recall(main.handle.metrics_url)
        log(f"   server memory after warm-up: RSS {memory['total_rss_mib']:.0f} MiB, PSS {memory['total_pss_mib']:.0f} MiB; index self-checked recall@200: {_f(recall, 4)}")
        results: dict[str, dict[str, Any]] = {}
        for spec in specs:
            results[spec.label] = {}
            for c in spec.concurrency:
                results[spec.label][str(c)] = run_one(pa, spec, c, inputs[spec.label][c], main, raw_dir, log=log)
        memory_after = server_memory(main)
        writes = _count_writes(state_url, token) if any(s.model in WRITE_MODELS for s in specs) else None
        comparison = None
        if opts.compare:
            main.stop()
            comparison = compare(opts, pa, repo, state_url, inputs, work, raw_dir, servers, log)
        run = {
            "name": name,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t_start)),
            "seconds": round(time.time() - t_start, 1),
            "smoke": opts.smoke,
            "build": str(opts.build),
            "repository": str(repo),
            "device": served.device,  # the repository's instance groups: "gpu" is KIND_GPU
            "state": source_state if not catalog else state_url,
            "catalog": catalog,
            "catalog_items_served": n_items,
            "index": index,
            "index_setting": index_setting,
            "index_cache": opts.index_cache,
            "server_ready_seconds": round(ready_s, 1),
            "graphs_saved_before": graphs_saved,  # the ready time loaded saved graphs instead of building them
            "prewarm_seconds": round(warm_s, 1),
            "memory_after_warmup": memory,
            "index_recall": recall,
            "memory_after_runs": memory_after,
            "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
            "perf_analyzer": {"argv_prefix": pa, "version": perf_analyzer_version(pa)},
            "results": results,
            "writes": writes,
            "comparison": comparison,
        }
        if opts.write_docs:
            (out / "runs").mkdir(parents=True, exist_ok=True)
            (out / "runs" / f"{name}.json").write_text(json.dumps(run, indent=2, default=float) + "\n")
            assemble(out, log)
        return run
    finally:
        for s in servers:
            s.stop()
        if not opts.keep_work and opts.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _count_writes(state_url: str, token: str) -> dict[str, int]:
    """How many of the bench's events and items the state holds: proof that each request wrote."""
    from freshrec.store import open_store

    prefix = f"bench-{token}-"
    store = open_store(state_url)
    try:
        ev = sum(1 for e in store.events() if (e.event_id or "").startswith(prefix))
        it = sum(1 for item_id in store.item_vectors_since(0)[0] if item_id.startswith(prefix))
    finally:
        store.close()
    return {"events_stored": ev, "items_stored": it}

"""serving.md: the Markdown report of every run (tables, the exact perf_analyzer command lines,
the machine, the tuning study, catalog scale, the machine's slow bursts)."""

from __future__ import annotations

import math
from typing import Any

from freshrec.offline.benchmarks.jitter import FACTOR as JITTER_FACTOR
from freshrec.offline.benchmarks.jitter import INTERVAL_MS as JITTER_INTERVAL_MS
from freshrec.offline.benchmarks.serving.plan import COMPOSING


def index_label(r: dict[str, Any]) -> str:
    """A run's index as its tables name it: "(one copy)" after a run whose instances mapped one
    copy from the index cache, "(own copies)" after one whose instances kept their own
    (FRESHREC_INDEX_CACHE=off); runs that predate the shared copy have neither."""
    return r["index"] + {"shared": " (one copy)", "off": " (own copies)"}.get(r.get("index_cache"), "")


def _f(x: float | None, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _gpu_line(s: dict[str, Any]) -> str:
    """What the report says of the GPU: served on one, none here, or one here left idle."""
    gpu = s["machine"].get("gpu")
    if not gpu:
        return "**GPU**: unmeasured. No GPU was available; `freshrec bench gpu` is the prepared check for an H100/H200 host."
    if s.get("device") == "gpu":
        return f"**GPU**: served on {gpu} (instance groups KIND_GPU; `gpu_check.json` beside this file says where Triton placed them)."
    return f"**GPU**: {gpu} is on this machine, but the served repository's instance groups are KIND_CPU: CPU figures."


def render_md(s: dict[str, Any]) -> str:
    m = s["machine"]

    def fmt(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    if "load_average_at_end" in m:
        load = f"Load average (1, 5, 15 min) at the start: {fmt(m['load_average_at_start'])}; at the end: {fmt(m['load_average_at_end'])}. "
    else:  # run files written before the start was recorded: read when the run ended
        load = f"Load average (1, 5, 15 min) at the end of the run: {fmt(m['load_average_at_start'])}. "
    res = s["results"]
    L = [
        "# Serving under load: perf_analyzer over gRPC",
        "",
        f"`{'freshrec bench serving' + (' --smoke' if s['smoke'] else '')}` on {s['date_utc']} UTC ({s['seconds']:.0f} s in all). "
        f"Model repository `{s['repository']}`, state: {s['catalog_items_served']:,} catalog items"
        + (" (synthetic catalog by `freshrec.offline.benchmarks.catalog_scale`)" if s.get("catalog") else "")
        + f", retrieval index `{s['index']}`.",
        "",
        "**Machine**: " + f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']} (kernel {m['kernel']}, glibc {m['glibc']}), "
        f"Python {m['python']}; tritonserver {m['tritonserver']}; perf_analyzer {s['perf_analyzer']['version']}; "
        f"onnxruntime {m['onnxruntime']}; torch {m['torch']}; GPU: {m.get('gpu') or 'none'}. "
        f"{load}"
        "perf_analyzer runs on the same machine as the server and takes CPU from it.",
        "",
        _gpu_line(s),
        "",
        "How to read: one perf_analyzer run per model and concurrency level, a fixed number of measured requests "
        "(`--request-count`) after a short warm-up, synchronous gRPC clients; latencies are client-side (perf_analyzer) "
        "percentiles. Throughput is completed requests / (last response - first request) from perf_analyzer's per-request "
        "timestamps (`--profile-export-file`); perf_analyzer's own figure is beside it: with `--request-count` it divides by a window "
        "that ends at its next one-second poll, so short runs read low. The server columns are Triton's own statistics read before and after each run "
        "(averages per request, warm-up included): *queue* is time waiting in the scheduler (dynamic batching delay included), "
        "*overhead* is Triton's request latency minus queue and compute.",
        "",
        "Input data (`inputs/<run>/`, generated from the served state): `recommend` asks k=10 for 64 of the most active users "
        "(full 50-event histories, the issue's setting; 200 candidates reranked); `recommend_query` adds a free-text query (a real "
        "title); the user tower and the reranker get 8 of those users' real history tensors and their 200 retrieved candidates "
        "(computed with the build's own ONNX user tower); the text encoder and item tower get real tokenised catalog texts and "
        "their MiniLM embeddings; `ingest_events` sends one real MovieLens event per request and `upsert_items` one real catalog "
        "text per request, each under a new event/item id.",
        "",
    ]
    tg = s.get("targets", [])
    if tg:
        L += ["## Issue 5 targets measured here", "", "| target | measured | met | note |", "|---|---|---|---|"]
        for t in tg:
            unit = " ms" if t.get("unit", "ms") == "ms" else "/s"
            L.append(f"| {t['target']} | {_f(t['measured'], 3 if unit == ' ms' else 1)}{unit} | {'yes' if t['met'] else '**no**'} | {t['note']} |")
        L.append("")
    L += ["## Client side (perf_analyzer)", "", "| model | concurrency | requests | throughput /s | (perf_analyzer's figure) | p50 ms | p90 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
    for label, by_c in res.items():
        for c, r in sorted(by_c.items(), key=lambda kv: int(kv[0])):
            L.append(f"| {label} | {c} | {r['requests']} | {_f(r['throughput'], 1)} | {_f(r['throughput_perf_analyzer'], 1)} | {_f(r['p50_ms'])} | {_f(r['p90_ms'])} | {_f(r['p95_ms'])} | {_f(r['p99_ms'])} |")
    L += ["", "## Server side per model (Triton statistics, ms per request)", "",
          "| run | concurrency | model | requests | avg batch | queue | compute input | compute infer | compute output | overhead | queue + overhead |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, by_c in res.items():
        for c, r in sorted(by_c.items(), key=lambda kv: int(kv[0])):
            for model in [r["model"], *[x for x in COMPOSING.get(label, ()) if x != r["model"]]]:
                st = r["server"].get(model)
                if not st:
                    continue
                L.append(f"| {label} | {c} | {model} | {st['requests']} | {_f(st['avg_batch'])} | {_f(st['queue_ms'], 3)} | {_f(st['compute_input_ms'], 3)} | "
                         f"{_f(st['compute_infer_ms'], 3)} | {_f(st['compute_output_ms'], 3)} | {_f(st['overhead_ms'], 3)} | {_f(st['queue_plus_overhead_ms'], 3)} |")  # fmt: skip
    r1 = res.get("recommend", {}).get("1")
    engine = (r1 or {}).get("engine", "bls")
    if engine == "bls":
        L += ["", "For `recommend` the compute infer of the parent holds its own Python work (store read, retrieval, top-k) *and* the "
              "time it waits on its BLS calls; the composing rows show the towers' share.", ""]  # fmt: skip
    else:
        L += ["", "The pipeline models run the towers in their own process (engine `inprocess`): the towers' rows above are the "
              "direct requests to them; inside `recommend` their time is part of its compute infer (split below).", ""]  # fmt: skip
    if r1 and "recommend" in r1["server"]:
        srv = r1["server"]
        rec = srv["recommend"]
        wait = r1.get("csv", {}).get("grpc_response_wait_us", math.nan) / 1e3  # client's mean gRPC response wait
        outside = wait - rec["request_ms"]
        head = ("**Where a recommendation's time goes** (concurrency 1, means per request): "
                f"client gRPC response wait {wait:.2f} ms (p50 {r1['p50_ms']:.2f}) = Triton request {rec['request_ms']:.2f} ms "
                f"(queue {rec['queue_ms']:.3f}, compute input {rec['compute_input_ms']:.3f}, compute infer "
                f"{rec['compute_infer_ms']:.2f}, compute output {rec['compute_output_ms']:.3f}) + gRPC transport and "
                f"Triton's front end about {outside:.2f} ms. Inside compute infer: ")  # fmt: skip
        stages = (r1.get("stages") or {}).get("recommend", {})
        bls = {m: srv[m]["request_ms"] for m in ("user_tower", "reranker") if m in srv}
        if stages:
            named = {k: v["ms"] * v["calls"] / rec["requests"] for k, v in stages.items()}  # per recommend request
            rest = rec["compute_infer_ms"] - sum(named.values())
            L += [head + ", ".join(f"{k} {v:.2f} ms" for k, v in named.items())
                  + f" (freshrec_stage_latency_seconds, per request; `{engine}` engine: the tower stages "
                  + ("include the BLS round trip" if engine == "bls" else "are onnxruntime runs in the same process")
                  + f"), and the rest (request parsing, history tensors, response tensors) about {rest:.2f} ms.", ""]  # fmt: skip
        elif bls:
            own = rec["compute_infer_ms"] - sum(bls.values())
            L += [head + ", ".join(f"BLS {m} {v:.2f} ms (its queue {srv[m]['queue_ms']:.3f})" for m, v in bls.items())
                  + f", and the pipeline's own Python work (store reads, index refresh check, history tensors, retrieval, top-k, BLS "
                  f"marshalling) about {own:.2f} ms.", ""]  # fmt: skip
    if s.get("writes"):
        w = s["writes"]
        L += [f"Writes: every `ingest_events` request carried a new event id and every `upsert_items` request a new item id; "
              f"the state holds {w['events_stored']} of the bench's events and {w['items_stored']} of its items afterwards "
              "(= the requests sent, warm-up none): no request was an idempotent replay.", ""]  # fmt: skip
    cmp_ = s.get("comparison")
    if cmp_:
        L += ["## Tuning: before and after, side by side", "",
              f"One server per variant, all up at once on copies of the same state; the same perf_analyzer runs rotate through the "
              f"variants round by round so all see the same machine load; medians over {cmp_.get('rounds', '?')} rounds. Ratios are variant / "
              f"`{cmp_.get('baseline', 'before')}` "
              "(< 1 is better for latency, > 1 for throughput).", ""]  # fmt: skip
        if cmp_.get("note"):
            L += [cmp_["note"], ""]
        for k, v in cmp_["variants"].items():
            L.append(f"- `{k}`: {v}")
        L += ["", "| case | variant | p50 ms | p99 ms | throughput /s | queue + overhead ms | compute infer ms | p50 ratio | p99 ratio | throughput ratio | queue + overhead ratio |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for case, t in cmp_["table"].items():
            for name in cmp_["variants"]:
                v = t.get(name)
                if not v:
                    continue
                r = t.get("ratios_vs_before", {}).get(name, {})
                L.append(f"| {case} | {name} | {_f(v['p50_ms'])} | {_f(v['p99_ms'])} | {_f(v['throughput'], 1)} | {_f(v['queue_plus_overhead_ms'], 3)} | "
                         f"{_f(v['compute_infer_ms'])} | {_f(r.get('p50_ms'))} | {_f(r.get('p99_ms'))} | {_f(r.get('throughput'))} | {_f(r.get('queue_plus_overhead_ms'))} |")  # fmt: skip
        L.append("")
    cats = dict(sorted((s.get("catalogs") or {}).items(), key=lambda kv: (kv[1]["catalog_items_served"], kv[1]["index"])))
    if cats:
        runs = {"main": s, **cats}
        L += ["## Catalog scale: recommend at growing catalogs, side by side", "",
              "Synthetic catalogs from `freshrec.offline.benchmarks.catalog_scale.scaled_state` (the build's items and events plus generated "
              "movie-like items; see that module for which text embeddings are MiniLM and which its surrogate), served from the "
              "same repository with `FRESHREC_STATE`; `FRESHREC_INDEX` selects the retrieval index. Memory: of "
              "tritonserver and every Python-backend stub after the warm-up, as resident set (RSS: a page several processes map "
              "counts in each) and as proportional memory (PSS: it counts once, split over them), where the run recorded it. The "
              "instances map one copy of the item matrices and graphs from the index cache (`freshrec.index.cache`): RSS counts it "
              "in each, PSS once; runs without PSS predate the shared copy, when each instance held its own. 'one copy' / 'own copies': "
              "the same code run both ways side by side (`--index-cache shared|off`). Recall: the served index's own check against the exact scan on 32 sampled "
              "queries (`freshrec_index_recall`; 1 for the exact scan). Ready: from the server's start until every model is ready (the "
              "`recommend` instances load the catalog and build or map the graph); '(graphs loaded)': the index cache held an earlier run's "
              "graphs, so it is a load, not a build.", "",
              "| catalog | index | c=1 p50 ms | c=1 p99 ms | best /s with p99 <= 60 ms | recall@200 (self-check) | server RSS MiB | server PSS MiB | recommend stubs RSS MiB | recommend stubs PSS MiB | ready s | warm-up s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in runs.items():
            rec = r["results"].get("recommend", {})
            if not rec:
                continue
            best = max((x["throughput"] for x in rec.values() if x["p99_ms"] <= 60.0), default=0.0)
            mem = r.get("memory_after_warmup") or {}
            L.append(f"| {r['catalog_items_served']:,} | {index_label(r)} | {_f(rec.get('1', {}).get('p50_ms'))} | {_f(rec.get('1', {}).get('p99_ms'))} | "
                     f"{_f(best, 1)} | {_f(r.get('index_recall'), 4)} | {_f(mem.get('total_rss_mib'), 0)} | {_f(mem.get('total_pss_mib'), 0)} | "
                     f"{_f((mem.get('by_model_rss_mib') or {}).get('recommend'), 0)} | {_f((mem.get('by_model_pss_mib') or {}).get('recommend'), 0)} | "
                     f"{_f(r.get('server_ready_seconds'), 0)}{' (graphs loaded)' if r.get('graphs_saved_before') else ''} | "
                     f"{_f(r.get('prewarm_seconds'), 0)} |")  # fmt: skip
        L += ["", "Per stage (freshrec_stage_latency_seconds, ms per recommend request): retrieval is the index search; towers are "
              "the user tower and the reranker (onnxruntime runs in-process, or the BLS round trips with the `bls` engine).", "",
              "| catalog | index | concurrency | throughput /s | p50 ms | p90 ms | p99 ms | recommend compute infer ms | retrieval ms | towers ms |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in cats.items():
            for c, x in sorted(r["results"].get("recommend", {}).items(), key=lambda kv: int(kv[0])):
                srv = x["server"]
                rec = srv.get("recommend", {})
                st = (x.get("stages") or {}).get("recommend", {})
                per = {k: v["ms"] * v["calls"] / rec["requests"] for k, v in st.items()} if st and rec.get("requests") else {}
                if per:
                    retrieval, towers = per.get("retrieval"), per.get("user_tower", 0.0) + per.get("rerank", 0.0)
                else:  # runs from before the stage split: the BLS models' own request time
                    retrieval, towers = None, sum(srv.get(m, {}).get("request_ms", 0.0) for m in ("user_tower", "reranker"))
                L.append(f"| {r['catalog_items_served']:,} | {index_label(r)} | {c} | {_f(x['throughput'], 1)} | {_f(x['p50_ms'])} | {_f(x['p90_ms'])} | "
                         f"{_f(x['p99_ms'])} | {_f(rec.get('compute_infer_ms'))} | {_f(retrieval)} | {_f(towers)} |")  # fmt: skip
        L += ["", "Catalog-run command lines:", "", "```"]
        for r in cats.values():
            for by_c in r["results"].values():
                for c, x in sorted(by_c.items(), key=lambda kv: int(kv[0])):
                    L.append(x["command"])
        L += ["```", ""]
    L += _bursts_section(s, cats)
    for p in s.get("plots", []):
        L += [f"![{p[:-4].replace('_', ' ')}]({p})", ""]
    counts = sorted({r["requests"] for by_c in res.values() for r in by_c.values()})
    L += ["## Limits of these figures", "",
          "- perf_analyzer, tritonserver, its Python-backend stubs and onnxruntime share the same cores; on a 2-core machine the "
          "load generator's own CPU is a real part of the latency at higher concurrency.",
          f"- One run per point, {counts[0]}-{counts[-1]} requests: a p99 is set by the slowest 1% of a run, "
          f"{max(1, math.ceil(counts[0] / 100))} to {max(1, math.ceil(counts[-1] / 100))} requests. Other work on the machine "
          "and the machine's own slow bursts show up in it (the load average at the start is printed above; the bursts have their "
          "own section).",
          *_retried_note(s),
          "- Server-side averages include the warm-up requests (Triton's cumulative statistics read around each run).",
          "- `ingest_events` acknowledges only after SQLite's WAL is fsynced (`synchronous=FULL`): its tail is the disk's fsync tail.",
          "- The embedded tritonserver has no native onnxruntime backend: every ONNX model served on its own runs inside a "
          "Python-backend stub, so each direct tower request (and, with the `bls` engine, each BLS call) crosses a process boundary "
          "through shared memory. That is why the embedded flavour runs the towers in the pipeline's own process (`inprocess`). "
          "The NGC flavour's native backends, where `bls` is the default, are not measured here.",
          "- GPU: unmeasured (see above).", ""]  # fmt: skip
    L += ["## Rerun by hand", "",
          "The input data files are in `inputs/<run>/` beside this file (`ingest_events`/`upsert_items`: one file per concurrency "
          "level, each step a new event/item id; rerun those against a fresh copy of the state, or the events are "
          "idempotent replays). `freshrec bench perf-analyzer` fetches perf_analyzer 2.60.0 and prints the prefix that runs it "
          "on this machine (on glibc < 2.38: the Debian 13 loader). Start a server with every model loaded (`freshrec serve` "
          "loads the towers only for the `bls` engine; the launcher's `start_on_free_ports` loads them all) and replace the "
          "`-u` address; perf_analyzer needs no admin key (the config and statistics APIs it reads are open). "
          "The exact command lines of this run:", "", "```"]  # fmt: skip
    for label, by_c in res.items():
        for c, r in sorted(by_c.items(), key=lambda kv: int(kv[0])):
            L.append(r["command"])
    L += ["```", "", "Raw perf_analyzer CSV files and console logs: `raw/<run>/`; every run's figures: `runs/<run>.json`.", ""]
    return "\n".join(L)


def _retried_note(s: dict[str, Any]) -> list[str]:
    """A limits bullet naming the runs that stalled once and were run again (run_one)."""
    hung = s.get("stalled") or []
    if not hung:
        return []
    return [f"- {len(hung)} perf_analyzer run(s) stalled (perf_analyzer kept running after the server had answered every request "
            f"it was to send, or past its time limit) and were run again: {', '.join(f'`{h}`' for h in hung)} hold what perf_analyzer "
            "printed, what the server had answered and its log; the figures above are from the second attempt."]  # fmt: skip


def _bursts_section(s: dict[str, Any], cats: dict[str, Any]) -> list[str]:
    """The machine's slow bursts beside every run (freshrec.offline.benchmarks.jitter): how much of each tail they explain."""
    rows = [(s["catalog_items_served"], index_label(s), label, c, r) for label, by_c in s["results"].items() for c, r in by_c.items()]
    rows += [(x["catalog_items_served"], index_label(x), label, c, r) for x in cats.values() for label, by_c in x["results"].items() for c, r in by_c.items()]
    rows = [row for row in rows if row[4].get("machine_bursts")]
    if not rows:
        return []
    L = ["## The machine's slow bursts", "",
         "On a shared virtual machine the same instructions sometimes run many times slower for about a tenth of a second, on "
         "every vCPU at once; the host causes it, not the program. During every run, `freshrec.offline.benchmarks.jitter` times a fixed piece of Python "
         f"work every {JITTER_INTERVAL_MS:g} ms in its own process, in thread CPU time: being preempted by the benchmark's own processes does not "
         f"count, only the vCPU itself running slower does. A sample over {JITTER_FACTOR:g}x the median marks a burst (widened to the neighbouring "
         "normal samples); bursts per minute and the time in bursts are over the whole perf_analyzer run, its start-up and warm-up "
         "included. A request *in a burst* overlapped one. If the tail were the service's own, the slowest 1% would overlap bursts "
         "about as often as all requests do.", "",
         "| catalog | index | run | concurrency | requests | p99 ms | bursts per minute | time in bursts | worst slowdown | "
         "requests in bursts | slowest 1% in bursts | p99 outside bursts ms |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for items, index, label, c, r in sorted(rows, key=lambda x: (x[0], x[1], x[2] != "recommend", x[2], int(x[3]))):
        mb = r["machine_bursts"]
        L.append(f"| {items:,} | {index} | {label} | {c} | {mb['requests']} | {_f(r['p99_ms'])} | {_f(mb['bursts_per_minute'], 0)} | "
                 f"{100 * mb['slow_fraction']:.1f}% | {_f(mb['worst_slowdown'], 1)}x | {100 * mb['requests_in_bursts'] / mb['requests']:.1f}% | "
                 f"{mb['slowest_1pct_in_bursts']} of {mb['slowest_1pct']} | {_f(mb['p99_outside_bursts_ms'])} |")  # fmt: skip
    return L + ["", "`freshrec bench jitter --seconds 20` prints the bursts on any machine.", ""]

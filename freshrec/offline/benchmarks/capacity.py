"""Capacity model: what a catalog of 10M / 100M items at 10,000 recommendations/s needs (pods,
memory per pod, Redis memory and shards, GPUs), as arithmetic from the committed measurements.

    freshrec bench capacity [--figures docs/benchmarks] [--out docs/benchmarks]
                            [--items 10000000,100000000] [--recommendations-per-s 10000] [--events-per-s 10000]

Nothing is measured here: the figures are read from the JSON the other benchmarks committed
(`summary.json` of `freshrec bench serving`, its 100k and 1M catalog runs for every index kind;
`index.json` of `freshrec bench index`; `state_stores.json` of `freshrec bench stores`; a GPU run's
`gpu/summary.json` when there is one), and every derived figure is printed with the arithmetic
that gives it. Each line says what it rests on: **measured** (a committed figure, its file and
machine), **layout** (the code's data layout: dimensions, dtypes, Redis keys and commands) or
**assumption** (a stated extrapolation or planning figure, listed in `Assumptions`). A required
figure that is missing stops the model with `MissingFigure` naming it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("exact", "sq8", "hnsw")
# The rows of index.json that are the served structures (freshrec/index): the exact scan, the int8
# codes, the usearch graph (at the served search width, HnswGraph's default).
INDEX_METHODS = {"exact": "exact_torch", "sq8": "sq8_scan", "hnsw": "usearch_hnsw"}
SMALL, LARGE = 100_000, 1_000_000  # the measured catalog sizes the extrapolations start from
# helm/freshrec/values.yaml: the startup probe's periodSeconds x failureThreshold (tests/offline/benchmarks
# /test_capacity.py reads the chart and checks this and Assumptions.pod_cores against it).
STARTUP_WINDOW_S = 600
MIB = 2**20
GIB = 2**30


def _ceil(x: float) -> int:
    """ceil of a count computed in floats: 550.0000000001 (a rounding of 550) is 550."""
    return math.ceil(round(x, 9))


class MissingFigure(ValueError):
    """A figure the model needs is not in the committed JSON."""


@dataclass(frozen=True)
class Assumptions:
    """Every figure of the model that is not measured. `describe()` prints them in the report."""

    recommendations_per_s: float = 10_000
    events_per_s: float = 10_000  # each in its own ingest_events request (as measured; batches cost less per event, unmeasured)
    items_per_s: float = 100  # catalog upserts (new or changed items) per second
    users: int = 10_000_000  # users with state in Redis
    pod_cores: int = 2  # helm/freshrec/values.yaml, resourceProfiles.cpu: requests cpu "2"
    headroom: float = 0.7  # pods planned at this share of the measured rate (peaks, a lost pod, rollouts)
    p99_bound_ms: float = 60.0  # the bound on recommend's p99 under load
    # Searches of a second index of the same kind per warm recommend (the content channel's
    # short-term search: freshrec/serving/pipeline.py), priced like the item search. The catalog
    # runs predate the content index, so their retrieval stage is one search.
    content_searches: int = 1
    hnsw_growth: str = "power"  # "power": through the measured 100k and 1M points; "log": ~ log n
    bookkeeping_bytes: int = 100  # per item, per index the measurements did not hold: row dict entry, row int, id list slot
    # Redis (every byte figure below is an estimate of Redis's own encoding, not a measurement)
    shard_memory_gib: float = 25.0  # data per primary, leaving the rest of a 64 GiB node to AOF rewrite and fragmentation
    shard_commands_per_s: float = 25_000  # commands per primary (scripts count as one) with appendfsync always
    replicas_per_primary: int = 1  # README: one replica per primary
    retention_days: float = 7.0  # events kept per user (the store never trims them); = the event id TTL
    text_bytes: int = 100  # an item's text
    metadata_bytes: int = 50  # an item's metadata JSON
    item_id_bytes: int = 9  # "123456789"
    event_id_bytes: int = 36  # a UUID string
    vector_spaces: int = 2  # model versions with vectors in the store (served + the next during a rollout)
    key_bytes: int = 100  # per key: dict entry, key string, object header, expiry entry
    hash_field_bytes: int = 50  # per field of a hashtable-encoded hash (values above 64 bytes)
    zset_entry_bytes: int = 80  # per sorted-set entry: skiplist node + dict entry (members above 64 bytes)
    set_entry_bytes: int = 60  # per set member (hashtable encoding)

    def describe(self) -> list[str]:
        return [
            f"A1. Load: {self.recommendations_per_s:,.0f} recommendations/s (warm users, no query), {self.events_per_s:,.0f} events/s "
            f"each in its own `ingest_events` request (the measured shape; batching is unmeasured), {self.items_per_s:,.0f} item "
            f"upserts/s, {self.users:,} users with state.",
            f"A2. A pod is the measured machine: {self.pod_cores} cores (`helm/freshrec/values.yaml`, cpu profile); throughput "
            "scales with cores linearly where they differ. The measured throughputs had perf_analyzer on the same 2 cores, so "
            "they are lower bounds for a pod of its own.",
            f"A3. Pods are planned at {self.headroom:.0%} of the measured rate (peaks, a lost pod, rollouts: `rollout.md` measures "
            "the p99 during rollouts against steady state).",
            "A4. Per-request work = the measured non-retrieval compute at 1M items + the retrieval stage scaled to n; a pod's "
            "throughput scales inversely with it (the lines under the measured figures show how well that holds at 1M).",
            "A5. Retrieval time: `exact` and `sq8` scan every item, so linear in n from the 1M figure; `hnsw` "
            + ("through the measured 100k and 1M points as a power law, t ~ n^b (conservative: the textbook HNSW cost grows "
               "~log n; that variant is shown beside it)."
               if self.hnsw_growth == "power" else "grows ~log n from the 1M figure (the power law through the measured points grows faster)."),
            f"A6. A warm `recommend` searches {1 + self.content_searches} indexes of the served kind (item vectors, then the content "
            "index for the short-term channel; `freshrec/serving/pipeline.py`); the catalog runs measured one (they predate the "
            "content index), and the second is priced like the first (same kind, rows and dimension; a scan's cost does not "
            "depend on k, and the graph searches at least its set width, `expansion_search`).",
            "A7. Memory per pod: the measured resident set at 1M items plus the measured per-item slope (100k -> 1M) for the "
            "items beyond, linear; plus, per `recommend` instance, the content and topic indexes the measurement did not hold "
            f"(layout: their arrays, and {self.bookkeeping_bytes} bytes per item per index for the row dictionary and id list).",
            "A8. Ingest and upsert cost per pod do not depend on the catalog size, except each new item's content-neighbour "
            "search (one search at n) in `upsert_items`; ingest's measured cost is with SQLite (the fsync in the pod), taken "
            "as the pod's cost with Redis too.",
            f"A9. Redis memory: the key layout of `freshrec/store/redis_store.py` with assumed sizes: item text {self.text_bytes} B, "
            f"metadata {self.metadata_bytes} B, item ids {self.item_id_bytes} B, event ids {self.event_id_bytes} B, "
            f"{self.vector_spaces} vector spaces live; Redis's own overhead {self.key_bytes} B per key, {self.hash_field_bytes} B "
            f"per hash field, {self.zset_entry_bytes} B per sorted-set entry, {self.set_entry_bytes} B per set member (estimates "
            "of its encodings: `MEMORY USAGE` on real keys would replace them). Each event's item counted as new to the user's "
            "seen set (an upper bound), and every event carries an event id (`P{u}:ids` holds it for the id TTL).",
            f"A10. Events are kept {self.retention_days:g} days (the store never trims a user's events: without a retention job "
            "Redis grows by the per-day figure for ever).",
            f"A11. A Redis primary holds at most {self.shard_memory_gib:g} GiB of data and serves at most "
            f"{self.shard_commands_per_s:,.0f} commands/s (a script is one command; `appendfsync always`); "
            f"{self.replicas_per_primary} replica per primary. No saturation rate of a Redis shard has been measured here "
            "(`state_stores.md` measures sequential calls).",
        ]


# -- the figures -------------------------------------------------------------------------------
def _get(d: Any, path: str, source: str, what: str) -> Any:
    """d[a][b]... for path "a.b...", or MissingFigure naming the figure, the file and its use."""
    cur = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            raise MissingFigure(f"{source}: no {path} ({what}); rerun the benchmark that writes it")
        cur = cur[part]
    return cur


def _best(results: dict, source: str, path: str, bound_ms: float) -> dict:
    """The highest throughput over a model's concurrency levels whose p99 is within the bound."""
    runs = [r for r in results.values() if isinstance(r, dict) and "throughput" in r and "p99_ms" in r]
    ok = [r for r in runs if r["p99_ms"] <= bound_ms]
    if not ok:
        raise MissingFigure(f"{source}: no run in {path} with p99 <= {bound_ms:g} ms (the best throughput within the bound)")
    best = max(ok, key=lambda r: r["throughput"])
    return {"rps": float(best["throughput"]), "concurrency": int(best["concurrency"]), "p99_ms": float(best["p99_ms"])}


def _machine(m: dict, date: str) -> str:
    """"CPU, N cores[, GPU], date": the GPU part only where the run recorded one (null: "no GPU")."""
    gpu = "" if "gpu" not in m else f", {m['gpu'] or 'no GPU'}"
    return f"{m.get('cpu', '?')}, {m.get('cores', m.get('cpus', '?'))} cores{gpu}, {date}"


def figures_from(summary: dict, index: dict, stores: dict, gpu: dict | None = None, bound_ms: float = 60.0) -> dict:
    """The measured figures the model uses, each with its source, out of the committed JSON."""
    s, i, st = "summary.json", "index.json", "state_stores.json"
    rec: dict[str, dict] = {}
    for kind in KINDS:
        run = {}
        for n in (SMALL, LARGE):
            name = f"catalog_{n}_{kind}"
            cat = _get(summary, f"catalogs.{name}", s, f"the {n:,}-item catalog run with index {kind}")
            src = f"{s} catalogs.{name}"
            c1 = _get(cat, "results.recommend.1", src, "recommend at concurrency 1")
            run[n] = {
                "items": int(_get(cat, "catalog_items_served", src, "the catalog size served")),
                "rss_mib": float(_get(cat, "memory_after_warmup.total_rss_mib", src, "the server's resident set")),
                "retrieval_ms": float(_get(c1, "stages.recommend.retrieval.ms", src, "the retrieval stage at concurrency 1")),
                "infer_ms": float(_get(c1, "server.recommend.compute_infer_ms", src, "recommend's compute per request at concurrency 1")),
                "p50_ms": float(_get(c1, "p50_ms", src, "recommend's p50 at concurrency 1")),
                "p99_ms": float(_get(c1, "p99_ms", src, "recommend's p99 at concurrency 1")),
                "ready_s": float(_get(cat, "server_ready_seconds", src, "the server's time to ready")),
                "best": _best(_get(cat, "results.recommend", src, "recommend's concurrency sweep"), src, "results.recommend", bound_ms),
                "source": src,
                "machine": _machine(_get(cat, "machine", src, "the machine"), _get(cat, "date_utc", src, "the run's date") + " UTC"),
                "cores": int(_get(cat, "machine.cores", src, "the machine's cores")),
            }
        rec[kind] = run
    writes = {}
    for model in ("ingest_events", "upsert_items"):
        src = f"{s} results.{model}"
        writes[model] = {**_best(_get(summary, f"results.{model}", s, f"{model}'s concurrency sweep"), s, f"results.{model}", bound_ms),
                         "source": src, "machine": _machine(_get(summary, "machine", s, "the machine"), _get(summary, "date_utc", s, "the run's date") + " UTC"),
                         "cores": int(_get(summary, "machine.cores", s, "the machine's cores"))}  # fmt: skip
    from freshrec.index.hnsw import HnswGraph

    width = inspect.signature(HnswGraph.__init__).parameters["expansion_search"].default
    structures = {}
    rows = _get(index, "results", i, "every index run")
    for kind, method in INDEX_METHODS.items():
        found = [r for r in rows if r.get("method") == method and r.get("n_items") == LARGE
                 and (kind != "hnsw" or r.get("params", {}).get("expansion_search") == width)]  # fmt: skip
        if not found:
            raise MissingFigure(f"{i}: no {method} row at {LARGE:,} items" + (f" with expansion_search {width}" if kind == "hnsw" else "")
                                + " (the index structure's memory, build time and cost of adding one item)")  # fmt: skip
        r = found[0]
        structures[kind] = {"bytes_per_item": float(_get(r, "memory_bytes", i, f"{method}'s memory")) / LARGE,
                            "build_s": float(_get(r, "build_s", i, f"{method}'s build time")),
                            "add_ms": float(_get(r, "add_one_p50_ms", i, f"{method}'s cost of adding one item")), "method": method}  # fmt: skip
    index_machine = _get(index, "machine", i, "the machine")
    latency = _get(stores, "latency", st, "the stores' latencies")
    redis = {k: float(_get(latency, f"{k}.mean_ms", st, f"{k}'s mean latency"))
             for k in ("sqlite/recommend", "redis/recommend", "redis/ingest_events", "redis-cluster/recommend", "redis-cluster/ingest_events")}  # fmt: skip
    out = {
        "recommend": rec, "writes": writes, "structures": structures,
        "index_source": i, "index_machine": _machine(index_machine, str(_get(index, "date", i, "the run date"))),
        "redis": redis, "redis_source": st, "redis_machine": _machine(_get(stores, "machine", st, "the machine"), str(_get(stores, "date", st, "the run date"))),
        "gpu": None,
    }  # fmt: skip
    if gpu is not None and (gpu.get("machine") or {}).get("gpu"):
        src = "gpu/summary.json"
        out["gpu"] = {"items": int(_get(gpu, "catalog_items_served", src, "the catalog size served")),
                      "best": _best(_get(gpu, "results.recommend", src, "recommend's concurrency sweep"), src, "results.recommend", bound_ms),
                      "machine": _machine(gpu["machine"], str(_get(gpu, "date_utc", src, "the run's date")) + " UTC"), "source": src}  # fmt: skip
    return out


def load_figures(root: Path, bound_ms: float = 60.0) -> dict:
    """The figures out of `root` (docs/benchmarks); MissingFigure when a file or figure is missing."""
    raw = {}
    for name, bench in (("summary.json", "serving"), ("index.json", "index"), ("state_stores.json", "stores")):
        path = root / name
        if not path.is_file():
            raise MissingFigure(f"{path}: missing (written by `freshrec bench {bench}`)")
        raw[name] = json.loads(path.read_text())
    gpu_path = root / "gpu" / "summary.json"
    gpu = json.loads(gpu_path.read_text()) if gpu_path.is_file() else None
    return figures_from(raw["summary.json"], raw["index.json"], raw["state_stores.json"], gpu, bound_ms)


# -- the arithmetic ----------------------------------------------------------------------------
def _dims() -> dict[str, int]:
    """Sizes from the code: the item space, the content vector, the text embedding, the topics, instances."""
    from freshrec.config import TEXT_DIM, DeployConfig, ItemTowerConfig, TextEncoderConfig, TopicConfig

    return {"item": ItemTowerConfig().dim, "content": TextEncoderConfig().content_dim, "text": TEXT_DIM,
            "topics": TopicConfig().n_topics, "instances": DeployConfig().pipeline_instances}  # fmt: skip


def hnsw_exponent(fig: dict) -> float:
    """b in t ~ n^b through the measured 100k and 1M retrieval stages of the graph."""
    small, large = fig["recommend"]["hnsw"][SMALL], fig["recommend"]["hnsw"][LARGE]
    return math.log(large["retrieval_ms"] / small["retrieval_ms"]) / math.log(large["items"] / small["items"])


def retrieval_ms(fig: dict, kind: str, n: int, growth: str = "power") -> float:
    """One search of `kind` over n items, from the 1M figure (A5)."""
    m = fig["recommend"][kind][LARGE]
    if kind != "hnsw":
        return m["retrieval_ms"] * n / m["items"]
    if growth == "log":
        return m["retrieval_ms"] * math.log(n) / math.log(m["items"])
    return m["retrieval_ms"] * (n / m["items"]) ** hnsw_exponent(fig)


def recommend_ms(fig: dict, kind: str, n: int, a: Assumptions, growth: str | None = None) -> float:
    """Per-request compute at n: the measured non-retrieval part + every search at n (A4, A6)."""
    m = fig["recommend"][kind][LARGE]
    return (m["infer_ms"] - m["retrieval_ms"]) + (1 + a.content_searches) * retrieval_ms(fig, kind, n, growth or a.hnsw_growth)


def pod_rps(fig: dict, kind: str, n: int, a: Assumptions, growth: str | None = None) -> float:
    """Recommendations/s of one pod at n: the measured best rate at 1M, scaled by the work (A2, A4)."""
    m = fig["recommend"][kind][LARGE]
    return m["best"]["rps"] * m["infer_ms"] / recommend_ms(fig, kind, n, a, growth) * a.pod_cores / m["cores"]


def pods(fig: dict, kind: str, n: int, a: Assumptions, growth: str | None = None) -> dict:
    """Cores and pods for the load of A1 at n (A2, A3, A8)."""
    d = _dims()
    w = fig["writes"]
    per_rec = a.pod_cores / pod_rps(fig, kind, n, a, growth)
    per_event = w["ingest_events"]["cores"] / w["ingest_events"]["rps"]
    per_item = w["upsert_items"]["cores"] / w["upsert_items"]["rps"] + retrieval_ms(fig, kind, n, growth or a.hnsw_growth) / 1000
    cores = {"recommend": a.recommendations_per_s * per_rec, "ingest": a.events_per_s * per_event, "upsert": a.items_per_s * per_item}
    # every recommend instance of every pod adds each new item to its item and content indexes
    upkeep = a.items_per_s * d["instances"] * 2 * fig["structures"][kind]["add_ms"] / 1000
    total = sum(cores.values())
    usable = a.pod_cores * a.headroom - upkeep
    return {"cores": cores, "total_cores": total, "upkeep_cores_per_pod": upkeep, "per_recommend_cores": per_rec,
            "pods_at_measured_rate": _ceil(total / (a.pod_cores - upkeep)) if a.pod_cores > upkeep else None,
            "pods": _ceil(total / usable) if usable > 0 else None}  # fmt: skip


def pod_memory(fig: dict, kind: str, n: int, a: Assumptions) -> dict:
    """Bytes per pod at n (A7): the measured resident set extrapolated, plus the unmeasured indexes."""
    d = _dims()
    small, large = fig["recommend"][kind][SMALL], fig["recommend"][kind][LARGE]
    slope = (large["rss_mib"] - small["rss_mib"]) * MIB / (large["items"] - small["items"])
    measured = large["rss_mib"] * MIB + slope * (n - large["items"])
    structure = fig["structures"][kind]["bytes_per_item"] if kind != "exact" else 0.0
    content = d["content"] * 4 + structure + a.bookkeeping_bytes
    topics = d["topics"] * 4 + a.bookkeeping_bytes
    extra = d["instances"] * n * (content + topics)
    return {"slope_bytes_per_item": slope, "measured_part": measured, "content_bytes_per_item": content,
            "topic_bytes_per_item": topics, "unmeasured_part": extra, "total": measured + extra}  # fmt: skip


def graph_build_s(fig: dict, n: int) -> float:
    """The HNSW graph's build at n on the measured cores: n log n from the 1M build (assumption)."""
    return fig["structures"]["hnsw"]["build_s"] * (n / LARGE) * math.log(n) / math.log(LARGE)


def _event_member(a: Assumptions) -> str:
    """A stored event as the Redis store writes it: "<seq 16 digits>|json" (`redis_store._payload`)."""
    from freshrec.store.base import Event
    from freshrec.store.redis_store import _payload

    return f"{0:016d}|" + _payload(Event("u", "9" * a.item_id_bytes, "click", 1764547200.123, event_id="e" * a.event_id_bytes))


def redis(fig: dict, n: int, a: Assumptions, pods_served: int) -> dict:
    """Redis memory, commands/s and shards at n (A9-A11); `pods_served` pods refresh their indexes."""
    d = _dims()
    f32 = 4
    vectors = d["item"] * f32 * a.vector_spaces + d["content"] * f32 + d["text"] * f32 + d["topics"] * f32
    fields = 7 + a.vector_spaces  # text, metadata, id_index, content, embedding, topics, version + the vectors
    strings = a.text_bytes + a.metadata_bytes + len(str(n)) * 2  # id_index and version as decimal strings
    item = (vectors + strings + fields * a.hash_field_bytes + a.key_bytes  # P{cat}:item:<id>
            + a.item_id_bytes + 8 + a.zset_entry_bytes  # its entry in P{cat}:items
            + a.item_id_bytes + len(str(n)) + a.hash_field_bytes)  # and in P{cat}:idx  # fmt: skip
    member = len(_event_member(a))
    event = (member + 8 + a.zset_entry_bytes  # P{u}:ev
             + a.event_id_bytes + 8 + a.zset_entry_bytes  # P{u}:ids (kept for the event id TTL)
             + a.item_id_bytes + a.set_entry_bytes)  # P{u}:seen (upper bound: a new item each time)  # fmt: skip
    user = 3 * a.key_bytes  # ev, seen, ids
    kept_events = a.events_per_s * 86_400 * a.retention_days
    mem = {"catalog": n * item, "users": a.users * user, "events": kept_events * event}
    total = sum(mem.values())
    readers = d["instances"] * pods_served
    # recommend: ZRANGEBYSCORE on {cat} (the refresh), then MULTI ZREVRANGE SMEMBERS EXEC in the user's slot;
    # ingest of one event: the reservation script on {g} and the event script in the user's slot, each with WAIT 1;
    # upsert: the item script on {cat} with WAIT 1, then an HMGET of the item by every recommend instance.
    ops = {"recommend": 5 * a.recommendations_per_s, "ingest": 4 * a.events_per_s, "upsert": 2 * a.items_per_s,
           "refresh": a.items_per_s * readers}  # fmt: skip
    hot = {"{cat}": a.recommendations_per_s + 2 * a.items_per_s + a.items_per_s * readers, "{g}": 2 * a.events_per_s}
    by_memory = _ceil(total / (a.shard_memory_gib * GIB))
    by_ops = _ceil(sum(ops.values()) / a.shard_commands_per_s)
    primaries = max(by_memory, by_ops, 1)
    return {"item_bytes": item, "event_bytes": event, "event_member": member, "user_bytes": user, "kept_events": kept_events,
            "memory": mem, "total": total, "per_day": a.events_per_s * 86_400 * event, "ops": ops, "hot": hot, "readers": readers,
            "by_memory": by_memory, "by_ops": by_ops, "primaries": primaries, "nodes": primaries * (1 + a.replicas_per_primary),
            "catalog_fits_one_shard": mem["catalog"] <= a.shard_memory_gib * GIB,
            "hot_over_budget": [slot for slot, rate in hot.items() if rate > a.shard_commands_per_s]}  # fmt: skip


def model(fig: dict, sizes: tuple[int, ...], a: Assumptions) -> dict:
    """Every scenario's needs: per index kind the pods and memory, then Redis with the `auto` kind."""
    from freshrec.index.item_index import resolve_kind

    out = {}
    for n in sizes:
        kinds = {}
        for kind in KINDS:
            m = fig["recommend"][kind][LARGE]
            ms = recommend_ms(fig, kind, n, a)
            kinds[kind] = {"retrieval_ms": retrieval_ms(fig, kind, n, a.hnsw_growth), "recommend_ms": ms,
                           "c1_p99_ms": ms * m["p99_ms"] / m["infer_ms"], "pod_rps": pod_rps(fig, kind, n, a),
                           "pods": pods(fig, kind, n, a), "memory": pod_memory(fig, kind, n, a)}  # fmt: skip
            kinds[kind]["meets_p99"] = kinds[kind]["c1_p99_ms"] <= a.p99_bound_ms
        other = "log" if a.hnsw_growth == "power" else "power"
        m = fig["recommend"]["hnsw"][LARGE]
        kinds["hnsw"]["other_growth"] = {"growth": other, "retrieval_ms": retrieval_ms(fig, "hnsw", n, other),
                                         "c1_p99_ms": recommend_ms(fig, "hnsw", n, a, other) * m["p99_ms"] / m["infer_ms"],
                                         "pod_rps": pod_rps(fig, "hnsw", n, a, other), "pods": pods(fig, "hnsw", n, a, other)}  # fmt: skip
        auto = resolve_kind("auto", n)
        served = kinds[auto]["pods"]["pods"] or 0
        out[n] = {"kinds": kinds, "auto": auto, "redis": redis(fig, n, a, served), "graph_build_s": graph_build_s(fig, n)}
    return out


# -- the report --------------------------------------------------------------------------------
def _gib(b: float) -> str:
    return f"{b / GIB:,.1f} GiB"


def _n(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n:,}"


def render(fig: dict, result: dict, a: Assumptions) -> str:
    d = _dims()
    L = []
    L.append("# Capacity model: 10M and 100M items at 10,000 recommendations/s" if tuple(result) == (10_000_000, 100_000_000)
             else f"# Capacity model: {', '.join(_n(n) for n in result)} items at {a.recommendations_per_s:,.0f} recommendations/s")  # fmt: skip
    L.append("")
    L.append("Written by `freshrec bench capacity` (`freshrec/offline/benchmarks/capacity.py`) from the figures the other "
             "benchmarks committed beside this file; nothing here was measured for it. Every derived figure is shown with the "
             "arithmetic that gives it, and every line says what it rests on: **measured** (a committed figure: its file and the "
             "machine it was measured on), **layout** (the code's dimensions, dtypes, Redis keys and commands) or **assumption** "
             "(the numbered list below). The catalogs measured go up to 1M items; everything at 10M and 100M is an "
             "extrapolation, and the assumptions say which law each one follows.")  # fmt: skip
    L.append("")
    L.append("## Measured figures used")
    L.append("")
    L.append("| figure | value | source | machine |")
    L.append("|---|---|---|---|")
    for kind in KINDS:
        for n in (SMALL, LARGE):
            m = fig["recommend"][kind][n]
            b = m["best"]
            L.append(f"| recommend, {m['items']:,} items, `{kind}` | best {b['rps']:.1f}/s with p99 <= {a.p99_bound_ms:g} ms "
                     f"(concurrency {b['concurrency']}, p99 {b['p99_ms']:.1f} ms); at concurrency 1: compute {m['infer_ms']:.2f} ms per "
                     f"request, of which retrieval {m['retrieval_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms; server resident set "
                     f"{m['rss_mib']:,.0f} MiB; ready in {m['ready_s']:.0f} s | `{m['source']}` | {m['machine']} |")  # fmt: skip
    for model_name, w in fig["writes"].items():
        L.append(f"| {model_name}, one per request | best {w['rps']:.1f}/s with p99 <= {a.p99_bound_ms:g} ms (concurrency "
                 f"{w['concurrency']}, p99 {w['p99_ms']:.1f} ms), SQLite state | `{w['source']}` | {w['machine']} |")  # fmt: skip
    for kind, s in fig["structures"].items():
        L.append(f"| `{s['method']}` at {LARGE:,} items | {s['bytes_per_item']:.0f} bytes per item, built in {s['build_s']:.1f} s, "
                 f"one item added in {s['add_ms']:.3f} ms | `{fig['index_source']}` | {fig['index_machine']} |")  # fmt: skip
    r = fig["redis"]
    L.append(f"| served round trips, mean, sequential calls | recommend: SQLite {r['sqlite/recommend']:.2f} ms, Redis "
             f"{r['redis/recommend']:.2f} ms, Redis Cluster {r['redis-cluster/recommend']:.2f} ms; ingest_events: Redis "
             f"{r['redis/ingest_events']:.2f} ms, Redis Cluster {r['redis-cluster/ingest_events']:.2f} ms (tiny build, machine "
             f"shared with other test suites) | `{fig['redis_source']}` | {fig['redis_machine']} |")  # fmt: skip
    L.append("")
    L.append("The 1M-item catalogs are the build's items plus synthetic ones, most embedded by a surrogate of MiniLM "
             "(`index.md` says how close it is). Layout figures come from the code: item vectors of "
             f"{d['item']} float32, content vectors of {d['content']}, text embeddings of {d['text']}, {d['topics']} topics, "
             f"{d['instances']} `recommend` instances per server (`freshrec/config.py`).")  # fmt: skip
    L.append("")
    L.append("How the measured points bear on the laws the extrapolations follow:")
    L.append("")
    for kind in KINDS:
        small, large = fig["recommend"][kind][SMALL], fig["recommend"][kind][LARGE]
        ideal = d["instances"] * 1000 / large["infer_ms"]
        L.append(f"- `{kind}`: retrieval {small['retrieval_ms']:.2f} -> {large['retrieval_ms']:.2f} ms for "
                 f"{large['items'] / small['items']:g}x the items (x{large['retrieval_ms'] / small['retrieval_ms']:.2f}); at "
                 f"{large['items']:,} items, {d['instances']} instances / {large['infer_ms']:.2f} ms = {ideal:.1f}/s against the "
                 f"measured best {large['best']['rps']:.1f}/s ({large['best']['rps'] / ideal:.2f} of it).")  # fmt: skip
    L.append("")
    L.append("## Assumptions")
    L.append("")
    L.extend(f"- {line}" for line in a.describe())
    L.append("")
    b = hnsw_exponent(fig)
    for n, res in result.items():
        L.extend(_scenario(fig, n, res, a, b))
    L.append("## Summary")
    L.append("")
    L.append(f"Pods of {a.pod_cores} cores at {a.headroom:.0%} of the measured rate; memory per pod for the index kind; Redis "
             "primaries (and nodes with replicas) for the whole state. Every figure is an extrapolation from 1M items (see above).")  # fmt: skip
    L.append("")
    L.append("| items | index | pods (for throughput) | cores | memory per pod | p99 bound met at concurrency 1 | Redis primaries (nodes) | Redis memory |")
    L.append("|---|---|---|---|---|---|---|---|")
    for n, res in result.items():
        rd = res["redis"]
        for kind in KINDS:
            k = res["kinds"][kind]
            p = k["pods"]["pods"]
            L.append(f"| {_n(n)} | `{kind}`{' (auto)' if kind == res['auto'] else ''} | {f'{p:,}' if p else 'none suffices'} | "
                     f"{f'{p * a.pod_cores:,}' if p else '-'} | {_gib(k['memory']['total'])} | {'yes' if k['meets_p99'] else 'no'} "
                     f"({k['c1_p99_ms']:.1f} ms) | {rd['primaries']} ({rd['nodes']}) | {_gib(rd['total'])} |")  # fmt: skip
    L.append("")
    L.append("## What would replace the assumptions")
    L.append("")
    L.append("- `freshrec bench serving --catalog-items 10000000 --index hnsw` (and `sq8`) on the current code: the per-request "
             "cost with the content index at 10M (A4-A6) and the resident set (A7) at a size the model now extrapolates to.")
    L.append("- `freshrec bench gpu` on an H100/H200 host (no GPU figure is in the repository): the GPU sections above.")
    L.append("- `MEMORY USAGE` of real item, user and event keys after `freshrec bench stores`, and a saturation run of one "
             "Redis primary with `appendfsync always` (A9, A11).")
    L.append("- `ingest_events` with batches of events, through Redis (A1, A8).")
    L.append("")
    return "\n".join(L)


def _scenario(fig: dict, n: int, res: dict, a: Assumptions, b: float) -> list[str]:
    d = _dims()
    L = [f"## {_n(n)} items, {a.recommendations_per_s:,.0f} recommendations/s, {a.events_per_s:,.0f} events/s", ""]
    L.append("### Pods (CPU)")
    L.append("")
    for kind in KINDS:
        m, k = fig["recommend"][kind][LARGE], res["kinds"][kind]
        fixed = m["infer_ms"] - m["retrieval_ms"]
        if kind == "hnsw":
            law = (f"{m['retrieval_ms']:.2f} ms x ({n:,} / {m['items']:,})^{b:.3f} (b = ln({m['retrieval_ms']:.2f} / "
                   f"{fig['recommend']['hnsw'][SMALL]['retrieval_ms']:.2f}) / ln(10), the measured 100k -> 1M growth)"
                   if a.hnsw_growth == "power" else f"{m['retrieval_ms']:.2f} ms x ln({n:,}) / ln({m['items']:,})")  # fmt: skip
        else:
            law = f"{m['retrieval_ms']:.2f} ms x {n:,} / {m['items']:,} (linear)"
        p = k["pods"]
        L.append(f"- `{kind}`{' (what `auto` serves at this size)' if kind == res['auto'] else ''}:")
        L.append(f"  - measured at {m['items']:,} items: compute {m['infer_ms']:.2f} ms per request at concurrency 1, retrieval "
                 f"{m['retrieval_ms']:.2f} ms of it, so {fixed:.2f} ms is the rest; best {m['best']['rps']:.1f}/s per "
                 f"{m['cores']}-core server with p99 <= {a.p99_bound_ms:g} ms.")  # fmt: skip
        L.append(f"  - assumption (A5): one search at {_n(n)} = {law} = **{k['retrieval_ms']:.1f} ms**.")
        L.append(f"  - assumption (A4, A6): per request {fixed:.2f} + {1 + a.content_searches} x {k['retrieval_ms']:.1f} = "
                 f"**{k['recommend_ms']:.1f} ms**; concurrency-1 p99 ~ {k['recommend_ms']:.1f} x {m['p99_ms']:.2f} / "
                 f"{m['infer_ms']:.2f} (the measured p99 / compute at 1M) = {k['c1_p99_ms']:.1f} ms"
                 + (f": above the {a.p99_bound_ms:g} ms bound before any queueing, so no number of pods meets it with this index."
                    if not k["meets_p99"] else f", within the {a.p99_bound_ms:g} ms bound."))  # fmt: skip
        L.append(f"  - per pod: {m['best']['rps']:.1f}/s x {m['infer_ms']:.2f} / {k['recommend_ms']:.1f} x {a.pod_cores}/{m['cores']} "
                 f"cores = **{k['pod_rps']:.1f} recommendations/s**.")  # fmt: skip
        w = fig["writes"]
        L.append(f"  - cores: recommend {a.recommendations_per_s:,.0f}/s x {a.pod_cores} cores / {k['pod_rps']:.1f}/s = "
                 f"{p['cores']['recommend']:,.1f}; ingest {a.events_per_s:,.0f}/s x {w['ingest_events']['cores']} cores / "
                 f"{w['ingest_events']['rps']:.1f}/s (measured) = {p['cores']['ingest']:,.1f}; upsert {a.items_per_s:,.0f}/s x "
                 f"({w['upsert_items']['cores']} cores / {w['upsert_items']['rps']:.1f}/s (measured) + {k['retrieval_ms']:.1f} ms of "
                 "neighbour search) = "
                 f"{p['cores']['upsert']:,.1f}; total **{p['total_cores']:,.1f} cores**.")  # fmt: skip
        L.append(f"  - each pod also adds every new item to 2 indexes in each of its {d['instances']} instances: "
                 f"{a.items_per_s:,.0f} x {d['instances'] * 2} x {fig['structures'][kind]['add_ms']:.3f} ms = "
                 f"{p['upkeep_cores_per_pod']:.3f} cores per pod (measured add time at 1M, assumed the same at {_n(n)}).")  # fmt: skip
        if p["pods"]:
            L.append(f"  - pods: ceil({p['total_cores']:,.1f} / ({a.pod_cores} x {a.headroom:g} - {p['upkeep_cores_per_pod']:.3f})) = "
                     f"**{p['pods']:,} pods** ({p['pods'] * a.pod_cores:,} cores); at the measured rate with no headroom: "
                     f"{p['pods_at_measured_rate']:,}.")  # fmt: skip
        else:
            L.append("  - pods: none suffices: the index upkeep alone takes a pod's usable cores.")
        if kind == "hnsw":
            o = k["other_growth"]
            L.append(f"  - with the other growth law ({o['growth']} n): one search {o['retrieval_ms']:.1f} ms, concurrency-1 p99 ~ "
                     f"{o['c1_p99_ms']:.1f} ms, {o['pod_rps']:.1f}/s per pod, {o['pods']['pods'] or 'no'} pods.")  # fmt: skip
    L.append("")
    L.append("### Memory and start-up per pod")
    L.append("")
    L.append(f"Each pod holds the whole index in each of its {d['instances']} `recommend` instances.")
    L.append("")
    for kind in KINDS:
        m, mem = fig["recommend"][kind], res["kinds"][kind]["memory"]
        small, large = m[SMALL], m[LARGE]
        L.append(f"- `{kind}`: measured resident set {small['rss_mib']:,.0f} MiB at {small['items']:,} items and "
                 f"{large['rss_mib']:,.0f} MiB at {large['items']:,}: {mem['slope_bytes_per_item']:,.0f} bytes per item per pod. "
                 f"Assumption (A7, linear): {large['rss_mib']:,.0f} MiB + {mem['slope_bytes_per_item']:,.0f} B x "
                 f"{n - large['items']:,} = {_gib(mem['measured_part'])}; layout, not in that measurement: "
                 f"{d['instances']} instances x {n:,} x ({mem['content_bytes_per_item']:.0f} B content index + "
                 f"{mem['topic_bytes_per_item']:.0f} B topics) = {_gib(mem['unmeasured_part'])}; **{_gib(mem['total'])} per pod**.")  # fmt: skip
    L.append(f"- For scale: the item matrix alone is {n:,} x {d['item']} x 4 B = {_gib(n * d['item'] * 4)} per instance (layout). "
             "The matrices grow by doubling when items are added after the start, so a catalog that grows past its "
             "start-up size can hold up to twice its matrices' bytes.")  # fmt: skip
    L.append("- The chart's cpu profile (`helm/freshrec/values.yaml`) sizes a pod's memory for catalogs near a million items: "
             "every row above needs its request and limit raised, or the index held by fewer instances "
             "(`DeployConfig.pipeline_instances`), or sharded across pods (not implemented).")  # fmt: skip
    e, q = fig["recommend"]["exact"][LARGE], fig["recommend"]["sq8"][LARGE]
    L.append(f"- Start-up with a scan: measured ready in {e['ready_s']:.0f} s (`exact`) and {q['ready_s']:.0f} s (`sq8`) at "
             f"{LARGE:,} items, reading the catalog from SQLite; assumption (linear): {e['ready_s'] * n / LARGE / 60:,.1f} and "
             f"{q['ready_s'] * n / LARGE / 60:,.1f} min at {_n(n)}.")  # fmt: skip
    s = fig["structures"]["hnsw"]
    L.append(f"- Start-up with `hnsw`: the 1M-item graph took {s['build_s']:.0f} s to build on the measured cores (`index.json`); "
             f"assumption (n log n): {s['build_s']:.0f} s x {n // LARGE:,} x ln({n:,}) / ln({LARGE:,}) = "
             f"{res['graph_build_s'] / 60:,.0f} min per graph, two graphs (item and content) per server unless the graph cache "
             f"has them; the chart's startup probe allows {STARTUP_WINDOW_S // 60} minutes.")  # fmt: skip
    L.append("")
    L.extend(_redis_lines(fig, n, res, a))
    L.extend(_gpu_lines(fig, n, a))
    return L


def _redis_lines(fig: dict, n: int, res: dict, a: Assumptions) -> list[str]:
    d, r = _dims(), res["redis"]
    L = ["### Redis", ""]
    L.append(f"- Layout + assumption (A9): an item is a hash of {d['item']}-d vectors in {a.vector_spaces} spaces, a "
             f"{d['content']}-d content vector, a {d['text']}-d text embedding and {d['topics']} topic weights (float32), its "
             f"text and metadata, plus its entries in `P{{cat}}:items` and `P{{cat}}:idx`: **{r['item_bytes']:,.0f} B per item**; "
             f"the catalog {n:,} x {r['item_bytes']:,.0f} B = **{_gib(r['memory']['catalog'])}**, all in the one `{{cat}}` hash "
             "slot, so on one primary.")  # fmt: skip
    L.append(f"- Layout + assumption (A9): an event is a `P{{u}}:ev` entry of {r['event_member']} B ("
             f"`<seq>|[item,type,ts,value,event_id]`), its id in `P{{u}}:ids` and its item in `P{{u}}:seen`: "
             f"**{r['event_bytes']:,.0f} B per event**; {a.events_per_s:,.0f}/s x 86,400 s = "
             f"**{_gib(r['per_day'])} per day**; kept {a.retention_days:g} days (A10): {r['kept_events']:,.0f} events = "
             f"{_gib(r['memory']['events'])}.")  # fmt: skip
    L.append(f"- Users: {a.users:,} x 3 keys x {a.key_bytes} B = {_gib(r['memory']['users'])}. Total "
             f"**{_gib(r['total'])}**.")  # fmt: skip
    L.append(f"- Layout: commands/s: recommend {a.recommendations_per_s:,.0f} x 5 (ZRANGEBYSCORE on `{{cat}}`, then MULTI, "
             f"ZREVRANGE, SMEMBERS, EXEC in the user's slot) = {r['ops']['recommend']:,.0f}; ingest {a.events_per_s:,.0f} x 4 (the "
             f"reservation script on `{{g}}` and the event script in the user's slot, each with WAIT 1) = {r['ops']['ingest']:,.0f}; "
             f"upsert {a.items_per_s:,.0f} x 2 (the item script and WAIT 1) = {r['ops']['upsert']:,.0f}; index refresh (one HMGET "
             f"of each new item by every `recommend` instance) {a.items_per_s:,.0f} x {r['readers']:,} instances "
             f"({res['kinds'][res['auto']]['pods']['pods']:,} pods with `{res['auto']}`) = {r['ops']['refresh']:,.0f}; total {sum(r['ops'].values()):,.0f}.")  # fmt: skip
    L.append(f"- Primaries (A11): by memory ceil({_gib(r['total'])} / {a.shard_memory_gib:g} GiB) = {r['by_memory']:,}; by "
             f"commands ceil({sum(r['ops'].values()):,.0f} / {a.shard_commands_per_s:,.0f}) = {r['by_ops']:,}; **{r['primaries']:,} "
             f"primaries, {r['nodes']:,} nodes** with {a.replicas_per_primary} replica each.")  # fmt: skip
    hot = ", ".join(f"`{slot}` {rate:,.0f} commands/s" for slot, rate in r["hot"].items())
    L.append(f"- Single slots, which no shard count spreads (layout): {hot}. "
             + (f"Over one primary's budget: {', '.join(f'`{s}`' for s in r['hot_over_budget'])}. " if r["hot_over_budget"]
                else "Both within one primary's budget. ")
             + ("The catalog fits one primary's memory budget." if r["catalog_fits_one_shard"]
                else f"The catalog does not fit one primary's {a.shard_memory_gib:g} GiB: at this size the `{{cat}}` slot "
                     "needs a layout that spreads items over slots (not implemented)."))  # fmt: skip
    rr = fig["redis"]
    L.append(f"- Measured: a served `recommend` took {rr['redis-cluster/recommend'] - rr['sqlite/recommend']:.1f} ms longer on "
             f"Redis Cluster than on SQLite (means, sequential calls) and an `ingest_events` {rr['redis-cluster/ingest_events']:.1f} ms: "
             f"at {a.events_per_s:,.0f} events/s that is {a.events_per_s * rr['redis-cluster/ingest_events'] / 1000:,.0f} ingest "
             "requests in flight across the pods (Little's law, at the measured latency). The catalog runs above used SQLite: the Redis "
             "round trips are not in their latencies, nor in the concurrency-1 p99 derived from them.")  # fmt: skip
    L.append("")
    return L


def _gpu_lines(fig: dict, n: int, a: Assumptions) -> list[str]:
    d = _dims()
    L = ["### GPUs", ""]
    g = fig["gpu"]
    per_instance = n * (d["item"] + d["content"]) * 4
    if g is None:
        L.append("No GPU figure has been measured: every committed run has `machine.gpu` null, and there is no "
                 "`gpu/summary.json`. So no GPU count is derived. What fills it: `freshrec bench gpu --catalog-items N` on an "
                 "H100/H200 host gives recommend's best rate with p99 within the bound per GPU at N items; GPUs = ceil("
                 f"{a.recommendations_per_s:,.0f} / that rate / {a.headroom:g}), with the rate scaled linearly to {_n(n)} (the GPU "
                 "path scans exactly: `sq8` and `hnsw` fall back to the exact scan on a GPU).")  # fmt: skip
    else:
        rate = g["best"]["rps"] * g["items"] / n
        L.append(f"- Measured: recommend at {g['items']:,} items on a GPU: best {g['best']['rps']:.1f}/s with p99 <= "
                 f"{a.p99_bound_ms:g} ms (`{g['source']}`, {g['machine']}).")  # fmt: skip
        L.append(f"- Assumption (exact scan, linear in n): {g['best']['rps']:.1f} x {g['items']:,} / {n:,} = {rate:.1f}/s per GPU; "
                 f"GPUs: ceil({a.recommendations_per_s:,.0f} / ({rate:.1f} x {a.headroom:g})) = "
                 f"**{_ceil(a.recommendations_per_s / (rate * a.headroom)):,}**.")  # fmt: skip
    L.append(f"- Layout: the GPU holds the item and content matrices, {n:,} x ({d['item']} + {d['content']}) x 4 B = "
             f"{_gib(per_instance)} per instance ({_gib(per_instance * d['instances'])} for {d['instances']} instances), against "
             "about 78 GiB on an H100 and 139 GiB on an H200.")  # fmt: skip
    L.append("")
    return L


def run(figures: Path, out: Path, sizes: tuple[int, ...] = (10_000_000, 100_000_000), a: Assumptions = Assumptions()) -> Path:
    """capacity.md under `out` from the figures under `figures`."""
    fig = load_figures(figures, a.p99_bound_ms)
    text = render(fig, model(fig, sizes, a), a)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "capacity.md"
    path.write_text(text)
    return path


def assumptions(**over: Any) -> Assumptions:
    """The default assumptions with some replaced (the command's options)."""
    return dataclasses.replace(Assumptions(), **{k: v for k, v in over.items() if v is not None})

"""Exact vs approximate retrieval at catalog scale: recall@200, single-query latency, build
time, memory, and the cost of adding or updating one item without a rebuild.

    freshrec bench index [--build build] [--sizes 10000,100000,1000000] [--queries 300]
                         [--source build|random] [--out docs/benchmarks] [--render]

`--source build` (default): the item vectors are the build's item tower over synthetic catalogs
made by `freshrec.offline.benchmarks.catalog_scale.scaled_state` (kept under `<build>/scaled/`, reused when the
same build, size and seed made them), and the queries are the build's user tower over real users'
histories, each with that user's seen items excluded, as served (k = 200 + seen, filtered).
`--source random`: clustered random unit vectors (a seconds-long smoke run for the tests).
Writes `index.md`, `index.json` (every figure) and `index_latency.png` under `--out`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from freshrec.offline.machine import cpu_name, ram_bytes, rss_bytes

K = 200  # candidates retrieved per request (RerankerConfig.num_candidates)
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_THREADS = os.cpu_count() or 1  # the libraries' default: one thread per core


def log(msg: str) -> None:
    print(f"[bench_index] {msg}", flush=True)


# -- data -------------------------------------------------------------------------------------
@dataclass
class Workload:
    items: np.ndarray  # (N, D) float32 unit rows
    queries: np.ndarray  # (Q, D) float32
    banned: list[np.ndarray]  # per query: rows excluded (the user's seen items)
    source: str


def random_workload(n: int, n_queries: int, dim: int = 64, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 2000), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), m)] + 0.3 * rng.standard_normal((m, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    items = draw(n)
    banned = [rng.choice(n, int(rng.integers(0, 60)), replace=False).astype(np.int64) for _ in range(n_queries)]
    return Workload(items, draw(n_queries), banned, "random")


def user_queries(build: Path, n_queries: int) -> tuple[np.ndarray, list[list[str]]]:
    """User vectors of the build's first users (user tower over their served histories) and the
    item ids each has seen; query i is user i's request as the pipeline makes it."""
    from freshrec.config import DeployConfig
    from freshrec.models.features import HISTORY_CONTEXT
    from freshrec.serving.engines import load_reference
    from freshrec.serving.pipeline import Recommender
    from freshrec.store.sqlite import SQLiteStore

    engine, tokenizer, cfg = load_reference(build)
    store = SQLiteStore(build / "state.db")
    rec = Recommender(store, engine, tokenizer, cfg, DeployConfig())
    rec.index.refresh(store)
    users = store.user_ids()
    out, seen = [], []
    for u in users:
        h = store.user_history(u, cfg.user.max_history + HISTORY_CONTEXT)
        hist = rec.history_tensors(h)
        if hist is None:
            continue
        out.append(rec.xp.asarray(engine.run("user_tower", hist)["user_vector"])[0])
        seen.append(sorted(h.seen))
        if len(out) == n_queries:
            break
    store.close()
    # Fewer users than queries (tiny builds): users repeat.
    reps = math.ceil(n_queries / len(out))
    return np.stack((out * reps)[:n_queries]).astype(np.float32), (seen * reps)[:n_queries]


def load_vectors(url: str) -> tuple[np.ndarray, dict[str, int]]:
    from freshrec.store import open_store

    store = open_store(url)
    try:
        ids, vectors, _ = store.item_vectors_since(0)
    finally:
        store.close()
    return vectors, {item_id: j for j, item_id in enumerate(ids)}


def scaled_url(build: Path, n: int, states: Path) -> str:
    from freshrec.offline.benchmarks.catalog_scale import content_key, scaled_state

    dest = states / f"state-{n}.db"
    key = content_key(build, n)
    meta = Path(str(dest) + ".json")
    if dest.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key:
        log(f"reusing {dest} (same build, size and seed)")
        return f"sqlite:///{dest}"
    url = scaled_state(build, n, dest, log=log)
    info = json.loads(meta.read_text()) if meta.exists() else {}
    meta.write_text(json.dumps({**info, "key": key}, indent=2))
    return url


# -- methods ----------------------------------------------------------------------------------
class Method:
    """build(items) once; search(query, k, banned) -> rows best first; add_one(row, vec)."""

    name = ""
    params: dict = {}
    settings: tuple[dict, ...] = ({},)  # search-time parameters measured on one build

    def configure(self, setting: dict) -> None: ...

    def build(self, items: np.ndarray) -> None: ...

    def search(self, q: np.ndarray, k: int, banned: np.ndarray) -> np.ndarray: ...

    def add_one(self, row: int, vec: np.ndarray) -> None: ...

    def memory_bytes(self) -> int:
        return 0


def _filtered(cand: np.ndarray, k: int, banned: np.ndarray) -> np.ndarray:
    cand = cand[cand >= 0]
    if len(banned):
        cand = cand[~np.isin(cand, banned)]
    return cand[:k]


class ServedIndex(Method):
    """A served retrieval path: freshrec.index.ItemIndex of one kind, searched as the pipeline
    searches it, with numpy's BLAS on `threads` threads (faiss sets its own to one per search)."""

    kind = "exact"
    threads: int | None = None  # None: leave the process's count alone
    index_params: dict = {}

    def build(self, items: np.ndarray) -> None:
        from freshrec.index import ItemIndex
        from freshrec.store.base import Item

        self.index = ItemIndex(items.shape[1], kind=self.kind, **self.index_params)
        self.index.apply([Item(str(j), "", v) for j, v in enumerate(items)])

    def search(self, q, k, banned):
        if self.threads is None:
            return self.index.search(q, k, banned.tolist())[0]
        with threadpool_limits(limits=self.threads, user_api="blas"):  # as DeployConfig.threads does
            return self.index.search(q, k, banned.tolist())[0]

    def add_one(self, row, vec):
        from freshrec.store.base import Item

        self.index.apply([Item(str(row), "", vec)])


class ExactServed(ServedIndex):
    """The served exact path: ItemIndex(kind="exact") (numpy matrix-vector product + partial
    top-k on the CPU)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or DEFAULT_THREADS
        self.name = "exact_served" if threads is None else f"exact_served_{threads}t"
        self.params = {"threads": self.threads}

    def memory_bytes(self) -> int:
        return self.index.matrix.nbytes


class ExactNumpy(Method):
    """Matrix-vector product + argpartition (numpy/BLAS)."""

    name = "exact_numpy"

    def build(self, items):
        self.buf, self.n = np.ascontiguousarray(items), len(items)

    def search(self, q, k, banned):
        s = self.buf[: self.n] @ q
        s[banned] = -np.inf
        part = np.argpartition(-s, k)[:k]
        return part[np.argsort(-s[part])]

    def add_one(self, row, vec):
        if self.n == len(self.buf):  # capacity doubling, as ItemIndex does
            self.buf = np.concatenate([self.buf, np.zeros_like(self.buf)])
        self.buf[self.n] = vec
        self.n += 1

    def memory_bytes(self) -> int:
        return self.n * self.buf.shape[1] * 4


class Faiss(Method):
    def __init__(self, kind: str, settings: tuple[dict, ...] = ({},), **params) -> None:
        self.kind, self.params, self.settings = kind, params, settings
        self.name = f"faiss_{kind}"

    def configure(self, setting):
        self.params.update(setting)
        if self.kind == "ivf" and "nprobe_fraction" in setting:
            self.params["nprobe"] = max(1, round(self.params["nlist"] * setting["nprobe_fraction"]))
            del self.params["nprobe_fraction"]

    def build(self, items):
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)  # build on every core ...
        self._build(items)
        faiss.omp_set_num_threads(1)  # ... search one query on one thread, as a served request does
        self.params["search_threads"] = 1

    def _build(self, items):
        import faiss

        d, n = items.shape[1], len(items)
        if self.kind == "flat":
            self.index = faiss.IndexFlatIP(d)
        elif self.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, self.params["M"], faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = self.params["ef_construction"]
        elif self.kind == "ivf":
            nlist = self.params["nlist"] = self.params.get("nlist") or max(16, int(math.sqrt(n)))
            self.quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(self.quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            train = items[rng.choice(n, min(n, 64 * nlist), replace=False)]
            self.index.train(train)
        self.index.add(items)

    def search(self, q, k, banned):
        count = k + len(banned)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.params["ef_search"], count)
        elif self.kind == "ivf":
            self.index.nprobe = self.params["nprobe"]
        _, labels = self.index.search(q[None], count)
        return _filtered(labels[0], k, banned)

    def add_one(self, row, vec):
        self.index.add(vec[None])  # faiss HNSW/IVF cannot remove: an update is add + filter the old label

    def memory_bytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)


class Sq8(ServedIndex):
    """The served int8 scan: ItemIndex(kind="sq8") (faiss scalar-quantised codes scanned in
    full, candidates filtered and rescored exactly), on one thread as served
    (DeployConfig.threads)."""

    name, kind, threads = "sq8_scan", "sq8", 1
    params = {"threads": 1}

    def memory_bytes(self) -> int:
        return self.index.scan.memory_bytes


class Usearch(ServedIndex):
    """The served HNSW path: ItemIndex(kind="hnsw") (usearch graph, candidates filtered and
    rescored exactly)."""

    kind = "hnsw"

    def __init__(self, dtype: str = "f32", settings: tuple[dict, ...] = ({},), **params) -> None:
        self.dtype, self.params, self.settings = dtype, {"dtype": dtype, **params}, settings
        self.name = "usearch_hnsw" if dtype == "f32" else f"usearch_hnsw_{dtype}"

    @property
    def index_params(self) -> dict:  # the graph settings, as ItemIndex passes them to HnswGraph
        return dict(self.params)

    def configure(self, setting):
        self.params.update(setting)
        if "expansion_search" in setting and getattr(self, "index", None) is not None:
            self.index.graph.expansion_search = setting["expansion_search"]

    def memory_bytes(self) -> int:
        return self.index.graph.memory_bytes


def methods_for(n: int, quick: bool, only: set[str] | None = None) -> list[Method]:
    """Every method, cheapest first; on one build each graph is searched at several widths.
    Graph construction width 64 for both libraries (128 costs 2.3x the build time for
    +0.02 recall at the same search width on the 100k catalog)."""
    efs = (256,) if quick else (512, 1024, 2048, 4096)
    ms: list[Method] = [
        ExactServed(), ExactServed(threads=1), ExactNumpy(), Faiss("flat"), Sq8(),
        Usearch("f32", settings=tuple({"expansion_search": e} for e in efs), connectivity=16, expansion_add=64),
        Usearch("i8", settings=tuple({"expansion_search": e} for e in efs), connectivity=16, expansion_add=64),
        Faiss("ivf", settings=({"nprobe_fraction": 1 / 16},) if quick else ({"nprobe_fraction": 1 / 16}, {"nprobe_fraction": 1 / 4})),
        Faiss("hnsw", settings=tuple({"ef_search": e} for e in efs), M=16, ef_construction=64),
    ]  # fmt: skip
    if n > 200_000:  # int8 graph: below target recall at 100k already; its 1M build does not fit the run
        ms = [m for m in ms if m.name != "usearch_hnsw_i8"]
    return [m for m in ms if only is None or m.name in only]


# -- measurement ------------------------------------------------------------------------------
def exact_truth(items: np.ndarray, queries: np.ndarray, banned: list[np.ndarray], k: int) -> list[set[int]]:
    x = torch.from_numpy(items)
    out = []
    for i in range(0, len(queries), 64):
        s = torch.from_numpy(queries[i : i + 64]) @ x.T
        for j, b in enumerate(banned[i : i + 64]):
            s[j, torch.from_numpy(b)] = float("-inf")
        out += [set(r.tolist()) for r in s.topk(k, dim=1).indices]
    return out


def measure(m: Method, w: Workload, truth: list[set[int]], k: int, warmup: int = 10) -> list[dict]:
    """Builds once, then per search setting: recall and latency; then one-item adds."""
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    m.build(w.items)
    build_s = time.perf_counter() - t0
    rss_delta = rss_bytes() - rss0
    rows_out = []
    for setting in m.settings:
        m.configure(setting)
        recalls, lat = [], []
        for i in range(warmup):
            m.search(w.queries[i % len(w.queries)], k, w.banned[i % len(w.queries)])
        for q, b, t in zip(w.queries, w.banned, truth):
            t1 = time.perf_counter()
            rows = m.search(q, k, b)
            lat.append((time.perf_counter() - t1) * 1e3)
            recalls.append(len(set(np.asarray(rows).tolist()) & t) / max(1, len(t)))
        rows_out.append({
            "method": m.name,
            "params": dict(m.params),
            "n_items": len(w.items),
            "queries": len(w.queries),
            "recall_at_200": round(float(np.mean(recalls)), 4),
            "recall_at_200_min": round(float(np.min(recalls)), 4),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "mean_ms": round(float(np.mean(lat)), 3),
            "build_s": round(build_s, 2),
            "rss_delta_bytes": int(rss_delta),
        })  # fmt: skip
    # One item at a time, as a refresh after `upsert_items` applies it: a new row, no rebuild.
    rng = np.random.default_rng(1)
    add = []
    for j in range(20):
        v = w.items[rng.integers(0, len(w.items))] + 0.01 * rng.standard_normal(w.items.shape[1]).astype(np.float32)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        t1 = time.perf_counter()
        m.add_one(len(w.items) + j, v)
        add.append((time.perf_counter() - t1) * 1e3)
    mem = m.memory_bytes()
    for r in rows_out:
        r["memory_bytes"] = int(mem)
        r["add_one_p50_ms"] = round(float(np.percentile(add, 50)), 3)
    return rows_out


def operating_points(results: list[dict], target: float = 0.95) -> dict[str, list[dict]]:
    """Per method and size, the fastest (p50) setting with recall@200 >= target, else the
    setting with the highest recall: the rows the plot and the summary use."""
    out: dict[str, list[dict]] = {}
    for name in dict.fromkeys(r["method"] for r in results):
        for n in sorted({r["n_items"] for r in results if r["method"] == name}):
            rows = [r for r in results if r["method"] == name and r["n_items"] == n]
            ok = [r for r in rows if r["recall_at_200"] >= target]
            out.setdefault(name, []).append(min(ok, key=lambda r: r["p50_ms"]) if ok else max(rows, key=lambda r: r["recall_at_200"]))
    return out


def _plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, rows in operating_points(results).items():
        xs = [r["n_items"] for r in rows]
        line = ax.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=name)[0]
        ax.plot(xs, [r["p99_ms"] for r in rows], marker="x", linestyle="--", color=line.get_color(), alpha=0.5)
        for r in rows:
            if r["recall_at_200"] < 1.0:
                ax.annotate(f"{r['recall_at_200']:.2f}", (r["n_items"], r["p50_ms"]), fontsize=6, color=line.get_color(),
                            textcoords="offset points", xytext=(3, -8))  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size (items)")
    ax.set_ylabel("single-query latency, ms (solid p50, dashed p99)")
    ax.set_title(f"top-{K} retrieval, dim 64, batch 1 (numbers: recall@200; ANN at its fastest setting with recall >= 0.95)", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(sizes: list[int], n_queries: int, source: str, build: Path, out: Path, states: Path | None = None,
        only: set[str] | None = None, append: bool = False) -> dict:
    """Measures every method at every size; rewrites index.{json,md,png} after each method, so
    an interrupted run keeps what it measured. `append` keeps earlier rows of other
    (method, size) pairs from an existing index.json (sizes run in separate invocations)."""
    import faiss
    import usearch

    quick = source == "random"
    t_all = time.time()
    command = "freshrec bench index " + " ".join(
        [f"--sizes {','.join(map(str, sizes))}", f"--queries {n_queries}", f"--source {source}"]
        + ([f"--methods {','.join(sorted(only))}"] if only else []) + (["--append"] if append else []))  # fmt: skip
    report: dict = {"results": [], "scaled_states": {}, "commands": [], "seconds": 0.0}
    if append and (out / "index.json").exists():
        report = json.loads((out / "index.json").read_text())
    earlier = float(report.get("seconds", 0.0))
    report["commands"] = [*report.get("commands", []), command]
    out.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        report.update({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "k": K, "dim": 64 if not report["results"] else report.get("dim", 64), "source": source,
            "build": str(build) if source == "build" else None,
            "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "ram_bytes": ram_bytes(), "platform": platform.platform(),
                        "python": platform.python_version(), "threads": DEFAULT_THREADS,
                        "load_average_at_end": list(os.getloadavg())},
            "libraries": {"faiss": faiss.__version__, "usearch": usearch.__version__, "torch": torch.__version__,
                          "numpy": np.__version__, "hnswlib": "not installed: no wheel for this platform"},
            "seconds": round(earlier + time.time() - t_all, 1),
        })  # fmt: skip
        (out / "index.json").write_text(json.dumps(report, indent=2))
        plotted = _plot(report["results"], out / "index_latency.png")
        (out / "index.md").write_text(markdown(report, plotted))

    if source == "build":
        build = build.resolve()
        states = (states or build / "scaled").resolve()
        queries, seen = user_queries(build, n_queries)
        report["queries"] = {"count": len(queries), "users": len({tuple(x) for x in seen}),
                             "seen_mean": float(np.mean([len(x) for x in seen])), "seen_max": max(len(x) for x in seen)}  # fmt: skip
        log(f"{len(queries)} queries: user tower over real users' histories ({build})")
    for n in sizes:
        if source == "build":
            url = scaled_url(build, n, states)
            items, ids = load_vectors(url)
            meta = Path(url[len("sqlite:///") :] + ".json")
            report["scaled_states"][str(n)] = json.loads(meta.read_text()) if meta.exists() else {}
            banned = [np.array(sorted(ids[i] for i in s if i in ids), np.int64) for s in seen]
            w = Workload(items, queries, banned, "build")
        else:
            w = random_workload(n, n_queries)
        report["dim"] = int(w.items.shape[1])
        log(f"n={len(w.items):,}: exact ground truth for {len(w.queries)} queries ...")
        truth = exact_truth(w.items, w.queries, w.banned, K)
        for m in methods_for(n, quick, only):
            rows = measure(m, w, truth, K)
            report["results"] = [r for r in report["results"] if (r["method"], r["n_items"]) != (m.name, len(w.items))] + rows
            for r in rows:
                log(f"n={r['n_items']:,} {r['method']} {r['params']}: recall@200 {r['recall_at_200']:.4f} "
                    f"p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms build {r['build_s']:.1f}s "
                    f"mem {r['memory_bytes'] / 2**20:.1f} MiB add1 {r['add_one_p50_ms']:.3f} ms")  # fmt: skip
            del m
            write()
    write()
    log(f"wrote {out / 'index.md'}, index.json, index_latency.png ({report['seconds']}s)")
    return report


def _mib(b: int) -> str:
    return f"{b / 2**20:,.1f}"


def decision(r: dict) -> list[str]:
    """The served choice, with the figures it rests on (largest size measured)."""
    import inspect

    from freshrec.index import ANN_THRESHOLD, SQ8_THRESHOLD, HnswGraph

    defaults = {k: v.default for k, v in inspect.signature(HnswGraph.__init__).parameters.items() if k not in ("self", "dim")}
    ops = operating_points(r["results"])
    n = max(x["n_items"] for x in r["results"])
    at = {name: next((x for x in rows if x["n_items"] == n), None) for name, rows in ops.items()}
    exact = min((x for name, x in at.items() if x and (name.startswith("exact") or name == "faiss_flat")),
                key=lambda x: x["p50_ms"], default=None)  # fmt: skip
    served = [x for x in r["results"] if x["method"] == "usearch_hnsw" and x["n_items"] == n
              and x["params"].get("expansion_search") == defaults["expansion_search"]]  # fmt: skip
    lines = ["", "## Choice", ""]
    if exact and served:
        u = served[0]
        lines += [
            f"At {n:,} items the served HNSW setting (usearch, connectivity {defaults['connectivity']}, expansion_add "
            f"{defaults['expansion_add']}, expansion_search {defaults['expansion_search']}) has recall@200 "
            f"{u['recall_at_200']:.4f} at p50 {u['p50_ms']:.2f} ms / p99 {u['p99_ms']:.2f} ms, against the fastest exact "
            f"scan ({exact['method']}) at p50 {exact['p50_ms']:.2f} ms / p99 {exact['p99_ms']:.2f} ms; its graph takes "
            f"{u['build_s']:.0f} s to build and {_mib(u['memory_bytes'])} MiB beside the item matrix.",
        ]
        if "faiss_hnsw" in at and at["faiss_hnsw"]:
            f = at["faiss_hnsw"]
            lines += [
                "",
                f"faiss HNSW at its fastest setting with recall >= 0.95 (or best): recall {f['recall_at_200']:.4f}, p50 "
                f"{f['p50_ms']:.2f} ms, build {f['build_s']:.0f} s, {_mib(f['memory_bytes'])} MiB.",
            ]
    by = {(x["method"], x["n_items"]): x for x in r["results"] if x["method"] in ("sq8_scan", "exact_served_1t")}
    for size in sorted({n for _, n in by}):
        q, e = by.get(("sq8_scan", size)), by.get(("exact_served_1t", size))
        if q and e:
            lines += [
                "",
                f"At {size:,} items the int8 scan (`sq8`) has recall@200 {q['recall_at_200']:.4f} (min {q['recall_at_200_min']:.3f}) "
                f"at p50 {q['p50_ms']:.2f} ms / p99 {q['p99_ms']:.2f} ms, {q['p50_ms'] / e['p50_ms']:.2f}x the p50 of the "
                f"served exact scan on one thread ({e['p50_ms']:.2f} ms), measured in the same run, for "
                f"{_mib(q['memory_bytes'])} MiB of codes and {q['build_s']:.1f} s of encoding.",
            ]
    hnsw_recall = f"recall@200 {served[0]['recall_at_200']:.4f} at {n:,} items in this run" if served else "recall below 1"
    lines += [
        "",
        f"`DeployConfig.index` / `FRESHREC_INDEX`: `auto` is the default: `exact` below {SQ8_THRESHOLD:,} items (the scan "
        f"costs well under a millisecond there), `sq8` below {ANN_THRESHOLD:,} (a quarter of the bytes to scan, no build, "
        "and the exact rescoring keeps recall at or near 1), `hnsw` from there on (faster than any full scan, at the "
        f"cost of a graph build, shared through the graph cache, and {hnsw_recall}). Each can be chosen outright. "
        "Approximate recall at fixed settings depends on the catalog's vectors, not only on its size: the served "
        "graph's search width was set where an earlier build's harder catalog still reached 0.96 at 1,000,000 items "
        "(why IVF lists were not adopted: `tuning.md`).",
    ]
    return lines


def markdown(r: dict, plotted: bool) -> str:
    m = r["machine"]
    lines = [
        "# Retrieval index: exact vs approximate at catalog scale",
        "",
        f"{' then '.join(f'`{c}`' for c in r['commands'])} (finished {r['date']}): {m['cpus']} cores ({m['cpu']}), {m['ram_bytes'] / 2**30:.0f} GiB RAM, "
        f"{m['platform']}, Python {m['python']}; torch {r['libraries']['torch']} (BLAS default {m.get('threads', m.get('torch_threads'))} threads), "
        f"faiss-cpu {r['libraries']['faiss']}, usearch {r['libraries']['usearch']}, numpy {r['libraries']['numpy']}; "
        f"hnswlib: {r['libraries']['hnswlib']}. Load average at the end: {', '.join(f'{x:.2f}' for x in m['load_average_at_end'])} "
        "(the machine is shared with other work, so p99 carries its noise). Every figure is also in `index.json`.",
        "",
        "## Protocol",
        "",
        f"Top-{r['k']} of dim-{r['dim']} unit vectors, one query at a time (batch 1, as served). Each query excludes the "
        "user's seen items the way the pipeline does: the index is asked for 200 + seen candidates, seen rows are dropped, "
        "200 are kept. recall@200 = overlap with the exact top-200 under the same exclusion, mean over queries (min in "
        "the JSON). Latency: wall time of one search call in-process (no server), after 10 warm-up calls.",
        "",
        "- `exact_served`: the served exact path (`ItemIndex(kind=\"exact\")`: numpy matrix-vector product + partial "
        "top-k) with BLAS's default threads; `exact_served_1t` the same on one thread, as served (`DeployConfig.threads`).",
        "- `exact_numpy`: numpy product + `argpartition`; `faiss_flat`: `IndexFlatIP` (exact).",
        "- `sq8_scan`: the served int8 scan (`ItemIndex(kind=\"sq8\")`: faiss `IndexScalarQuantizer` codes, 8 bits per "
        "dimension, scanned in full for 200 + seen candidates, which are filtered and rescored exactly against the item "
        "matrix); memory: the codes (N x 64 bytes) beside the item matrix.",
        "- `usearch_hnsw`: the served HNSW path (`ItemIndex(kind=\"hnsw\")`: usearch graph, inner product, candidates "
        "filtered and rescored exactly against the item matrix); `usearch_hnsw_i8`: the same graph storing int8 vectors.",
        "- `faiss_hnsw`: `IndexHNSWFlat` (inner product); `faiss_ivf`: `IndexIVFFlat`, nlist = sqrt(N).",
        "- Graphs and IVF lists are built on every core; faiss searches on one thread, usearch searches one query on one "
        "thread. `expansion_search`/`ef_search` below the requested count are raised to it by the index.",
        "- memory: the structure itself (exact: the item matrix; faiss: serialised index; usearch: `memory_usage`, which "
        "counts reserved capacity); the served HNSW path keeps the float32 item matrix as well (history and reranker "
        "inputs), N x 256 bytes. `rss_delta_bytes` in the JSON is the process RSS growth over the build.",
        "- add 1: adding one new item to the built index, the work a refresh does after `upsert_items` (p50 of 20).",
        "",
    ]
    if r["source"] == "build":
        lines += [
            f"Vectors: the build's item tower (`{r['build']}`, text only: id row 0, as for any new item) over synthetic "
            "movie-like catalogs from `freshrec.offline.benchmarks.catalog_scale.scaled_state` (the build's 1,682 MovieLens items keep their "
            f"own vectors); queries: the build's user tower over the served histories of the first "
            f"{r['queries']['users']} MovieLens users, one query each, each excluding that user's seen items "
            f"(mean {r['queries']['seen_mean']:.0f}, max {r['queries']['seen_max']}).",
        ]
        for n, st in r["scaled_states"].items():
            if st.get("surrogate_embedded"):
                c = st.get("surrogate_check") or {}
                lines += [
                    "",
                    f"**Shortcut at {int(n):,} items, not the full path**: {st['minilm_embedded']:,} synthetic texts are "
                    f"embedded by MiniLM; the other {st['surrogate_embedded']:,} get a bag-of-word-pieces ridge surrogate of "
                    "MiniLM, fitted on those MiniLM embeddings, then the real item tower. MiniLM embeds a few hundred texts/s "
                    "on this CPU, so 1M real embeddings did not fit the session. On held-out MiniLM-embedded texts "
                    f"({c.get('held_out', '?')}): text-embedding cosine to MiniLM {c.get('text_embedding_cosine', float('nan')):.3f}, "
                    f"item-vector cosine {c.get('item_vector_cosine', float('nan')):.3f}, top-10 neighbour overlap "
                    f"{c.get('top10_neighbour_overlap', float('nan')):.2f}, mean pairwise item cosine "
                    f"{c.get('mean_pairwise_item_cosine_surrogate', float('nan')):.3f} vs MiniLM's "
                    f"{c.get('mean_pairwise_item_cosine_minilm', float('nan')):.3f}: the same kind of cloud, slightly tighter, "
                    "but not the same neighbours.",
                ]
    else:
        lines += ["Vectors: clustered random unit vectors (smoke run, not a measurement of the models)."]
    lines += ["", "## Operating points", "",
              "Per method and size, the fastest setting with recall@200 >= 0.95 (else its best recall). The plot shows these.",
              "", "| items | method | setting | recall@200 | p50 ms | p99 ms | build s | memory MiB |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, rows in operating_points(r["results"]).items():
        for x in rows:
            p = ", ".join(f"{k}={v}" for k, v in x["params"].items() if k in ("expansion_search", "ef_search", "nprobe", "threads", "torch_threads"))
            lines.append(f"| {x['n_items']:,} | {name} | {p} | {x['recall_at_200']:.4f} | {x['p50_ms']:.3f} | {x['p99_ms']:.3f} | "
                         f"{x['build_s']:.1f} | {_mib(x['memory_bytes'])} |")  # fmt: skip
    if plotted:
        lines += ["", "![latency vs catalog size](index_latency.png)"]
    lines += [
        "",
        "## All runs",
        "",
        "| items | method | params | recall@200 (min) | p50 ms | p90 ms | p99 ms | build s | memory MiB | add 1 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in sorted(r["results"], key=lambda x: (x["n_items"], x["method"])):
        p = ", ".join(f"{k}={v}" for k, v in x["params"].items())
        lines.append(f"| {x['n_items']:,} | {x['method']} | {p} | {x['recall_at_200']:.4f} ({x['recall_at_200_min']:.2f}) | "
                     f"{x['p50_ms']:.3f} | {x['p90_ms']:.3f} | {x['p99_ms']:.3f} | {x['build_s']:.1f} | "
                     f"{_mib(x['memory_bytes'])} | {x['add_one_p50_ms']:.3f} |")  # fmt: skip
    lines += decision(r)
    lines += [
        "",
        "## New items without a rebuild",
        "",
        "Every model instance refreshes its index from the store's catalog version before serving. With "
        "`FRESHREC_INDEX=hnsw` the refresh adds new items to the usearch graph (`Index.add`, the 'add 1' column) and "
        "replaces an upserted existing item by `remove` + `add` under the same key (usearch marks the old node deleted "
        "and relinks); the graph is never rebuilt. faiss's HNSW and IVF indexes also add incrementally, but cannot remove "
        "(HNSW) or need ids mapped (IVF), so an update there is an add plus filtering the stale label (a tombstone "
        "set that only grows until a rebuild). Native remove/update is why the served index uses usearch; the "
        "Choice section and the tables show what faiss does better here (faiss's HNSW builds faster). With "
        "`FRESHREC_INDEX=sq8` a new item's int8 codes are appended and an updated item's codes overwritten in place "
        "(faiss `sa_encode` into the index's code array, rows kept in the index's order); the per-dimension ranges are "
        "refitted, and every code re-encoded, when the catalog has doubled since the last fit.",
        "",
        f"Whole run: {r['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def render(out: Path) -> dict:
    """index.md and the plot again from `out`/index.json (`freshrec bench index --render`)."""
    report = json.loads((out / "index.json").read_text())
    (out / "index.md").write_text(markdown(report, _plot(report["results"], out / "index_latency.png")))
    return report

"""`freshrec bench serving`: the served models under load, measured with the real perf_analyzer over gRPC.

    freshrec bench serving [--build build] [--repository model_repository/embedded] [--out docs/benchmarks]
                           [--smoke] [--state URL | --catalog-items N] [--index exact|sq8|hnsw|auto]
                           [--compare] [--only recommend,ingest_events]

What it does:

1. copies the build's state (or `--state`, or a synthetic catalog of `--catalog-items` items made by
   `freshrec.offline.benchmarks.catalog_scale.scaled_state`) into a private work folder, so the build stays as built;
2. writes perf_analyzer `--input-data` JSON files from that state into `<out>/inputs/`: real user ids
   for `recommend`; real history tensors, candidates, tokenised item texts and MiniLM embeddings
   for the towers and the reranker (computed with the build's own ONNX graphs); real MovieLens
   events and item texts for `ingest_events` / `upsert_items`, with an event id / item id that is
   new for every request of a run. perf_analyzer walks the data steps round-robin (each concurrent
   worker takes every n-th step) and starts again from the first step after the warm-up and for
   every run, so every write run gets its own file with at least as many steps as requests and
   no warm-up: every request is a real write, none is an idempotent replay;
3. starts tritonserver (server_ext/launcher.py) on the repository, with the statistics and
   model-config APIs unrestricted (perf_analyzer reads them over gRPC and cannot send the admin
   header there) on loopback;
4. runs perf_analyzer (`-i grpc`, a fixed `--request-count` per concurrency level, `--percentile=99`,
   `-f` CSV with `--verbose-csv`, `--bls-composing-models` for recommend and upsert_items) for every
   model and concurrency level, and snapshots Triton's own inference statistics around each run;
   beside every run, `freshrec.offline.benchmarks.jitter` watches for the machine's own slow bursts and says which of
   the run's slowest requests overlapped one (a run that hangs is cut off, logged and run again once);
5. writes `<out>/serving.md` (tables, the exact perf_analyzer command lines, machine details),
   `<out>/summary.json` (every figure) and PNG plots.

`--smoke` is the CI version: the tiny build (built into the work folder if `--build` has none), one
concurrency level, a few dozen requests per model. `--compare` adds the tuning study: the same
perf_analyzer runs against one server per variant (`TUNING_VARIANTS`: BLS vs in-process towers,
batching delay), rotating between the servers so all see the same machine load.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from freshrec.contract import ONNX_FILE
from freshrec.export.repository import read_config, read_settings, version_dir, write_config
from freshrec.offline.benchmarks.jitter import FACTOR as JITTER_FACTOR
from freshrec.offline.benchmarks.jitter import INTERVAL_MS as JITTER_INTERVAL_MS
from freshrec.offline.benchmarks.jitter import Probe, attribute
from freshrec.offline.machine import machine_info, rss_bytes

# Models whose calls a BLS parent makes; perf_analyzer reports them under "Composing models".
# Only models that receive requests during the run may be named (else perf_analyzer stops with
# "failed to find the requested model version").
COMPOSING = {
    "recommend": ("user_tower", "reranker"),
    "recommend_query": ("user_tower", "reranker", "text_encoder", "item_tower"),
    "upsert_items": ("text_encoder", "item_tower"),
}
WRITE_MODELS = ("ingest_events", "upsert_items")


@dataclass(frozen=True)
class Spec:
    """One model benchmarked at several concurrency levels (one perf_analyzer run per level)."""

    label: str  # key in summary.json (recommend_query is the model recommend with a query)
    model: str
    concurrency: tuple[int, ...]
    requests: int  # measured requests per concurrency level
    warmup: int = 10

    @property
    def composing(self) -> tuple[str, ...]:
        return COMPOSING.get(self.label, ())


def plan(smoke: bool, only: tuple[str, ...] = (), concurrency: tuple[int, ...] | None = None, requests: int | None = None) -> list[Spec]:
    """What runs, in order: reads first, then the writes (they grow histories and the catalog)."""
    if smoke:
        specs = [
            Spec("recommend", "recommend", (1,), 40, 5),
            Spec("user_tower", "user_tower", (1,), 40, 5),
            Spec("reranker", "reranker", (1,), 40, 5),
            Spec("item_tower", "item_tower", (1,), 40, 5),
            Spec("text_encoder", "text_encoder", (1,), 40, 5),
            Spec("ingest_events", "ingest_events", (1,), 40, 0),
            Spec("upsert_items", "upsert_items", (1,), 20, 0),
        ]
    else:
        specs = [
            # The targets' p99s (recommend, ingest, upsert) over 1,000-2,000 requests: the 10th-20th
            # slowest request, not the 2nd-4th of a few hundred, which moves with every burst of the machine
            Spec("recommend", "recommend", concurrency or (1, 2, 4, 8), 2000, 20),
            Spec("recommend_query", "recommend", (1,), 200, 10),
            Spec("user_tower", "user_tower", (1, 4), 400, 20),
            Spec("reranker", "reranker", (1, 4), 400, 20),
            Spec("item_tower", "item_tower", (1, 4), 400, 20),
            Spec("text_encoder", "text_encoder", (1, 4), 300, 20),
            Spec("ingest_events", "ingest_events", (1, 4), 1000, 0),
            Spec("upsert_items", "upsert_items", (1, 2), 1000, 0),
        ]
    if only:
        unknown = set(only) - {s.label for s in specs}
        if unknown:
            raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from {[s.label for s in specs]}")
        specs = [s for s in specs if s.label in only]
    if requests:
        specs = [Spec(s.label, s.model, s.concurrency, requests, min(s.warmup, max(1, requests // 10)) if s.warmup else 0) for s in specs]
    return specs


# ---------------------------------------------------------------------------------------------
# Input data
# ---------------------------------------------------------------------------------------------
def _round(a: np.ndarray) -> list:
    """Floats for JSON with 7 significant digits (float32 precision) to keep the files small."""
    return [float(f"{x:.7g}") for x in np.asarray(a, dtype=np.float64).ravel()]


def _tensor(values: list, shape: list[int]) -> dict[str, Any]:
    return {"content": values, "shape": shape}


def _onnx_session(repository: Path, model: str):
    from freshrec.serving.engines import onnx_session

    return onnx_session(version_dir(repository, model) / ONNX_FILE)


@dataclass
class Dataset:
    """What the input data is drawn from: the served state and the repository's own files."""

    events: list  # freshrec.store.Event, arrival order
    items: list  # freshrec.store.Item
    users: list[str]  # users with at least one event on a catalog item, most active first
    max_history: int
    num_candidates: int
    max_tokens: int

    @classmethod
    def load(cls, state_url: str, repository: Path) -> "Dataset":
        from freshrec.store import open_store

        store = open_store(state_url)
        try:
            events = list(store.events())
            items, _ = store.items_since(0)
        finally:
            store.close()
        settings = read_settings(repository)["model"]
        known = {it.item_id for it in items}
        counts: dict[str, int] = {}
        for e in events:
            if e.item_id in known:
                counts[e.user_id] = counts.get(e.user_id, 0) + 1
        users = sorted(counts, key=lambda u: (-counts[u], u))
        if not users:
            raise ValueError(f"{state_url}: no user has an event on a catalog item; nothing to recommend")
        return cls(events, items, users, settings["user"]["max_history"], settings["reranker"]["num_candidates"], settings["text"]["max_tokens"])


def _history(ds: Dataset, user: str, rows: dict[str, int], matrix: np.ndarray) -> dict[str, np.ndarray]:
    """The user's latest events as the contract's history tensors, without the batch dim, by
    the served pipeline's recipe (freshrec.models.features)."""
    from freshrec.models.features import HISTORY_CONTEXT, event_type_index, gather_vectors, history_arrays

    evs = sorted((e for e in ds.events if e.user_id == user and e.item_id in rows), key=lambda e: e.timestamp)
    evs = evs[-(ds.max_history + HISTORY_CONTEXT) :]
    arrays = history_arrays(
        timestamps=np.array([e.timestamp for e in evs]),
        values=np.array([e.value for e in evs], np.float32),
        types=np.array([event_type_index(e.event_type) for e in evs], np.int64),
        rows=np.array([rows[e.item_id] for e in evs], np.int64),
        max_history=ds.max_history,
    )
    arrays["history_vectors"] = gather_vectors(matrix, arrays["rows"], arrays["history_mask"])
    del arrays["rows"]
    return {name: a[0] for name, a in arrays.items()}


def generate_inputs(ds: Dataset, repository: Path, specs: list[Spec], out: Path, token: str, seed: int = 0,
                    tower_users: int = 8) -> dict[str, dict[int, Path]]:  # fmt: skip
    """Writes one perf_analyzer input-data JSON per model (per model and concurrency level for the
    writes, whose steps must be new) into `out`; returns label -> concurrency -> path."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    labels = {s.label for s in specs}
    paths: dict[str, dict[int, Path]] = {}

    def dump(name: str, steps: list[dict]) -> Path:
        path = out / f"{name}.json"
        path.write_text(json.dumps({"data": steps}, separators=(",", ":")))
        return path

    users = list(ds.users[: max(64, tower_users)])
    rng.shuffle(users)
    catalog = [it for it in ds.items]
    texts = [it.text for it in catalog]
    need_vectors = labels & {"user_tower", "reranker"}
    if "recommend" in labels:
        p = dump("recommend", [{"user_id": [u], "k": [10]} for u in users])
        paths["recommend"] = {c: p for s in specs if s.label == "recommend" for c in s.concurrency}
    if "recommend_query" in labels:
        picks = rng.choice(len(texts), size=len(users), replace=True)
        # The query is a real item text, shortened to its title as a visitor would type it.
        steps = [{"user_id": [u], "k": [10], "query": [texts[j].split(". Genres")[0]]} for u, j in zip(users, picks)]
        p = dump("recommend_query", steps)
        paths["recommend_query"] = {c: p for s in specs if s.label == "recommend_query" for c in s.concurrency}
    if need_vectors:
        rows = {it.item_id: r for r, it in enumerate(catalog)}
        matrix = np.stack([it.vector for it in catalog]).astype(np.float32)
        chosen = users[:tower_users]
        hists = [_history(ds, u, rows, matrix) for u in chosen]
        names = ("history_vectors", "history_features", "history_types", "history_mask")

        def hist_step(h: dict[str, np.ndarray]) -> dict[str, Any]:
            step = {}
            for n in names:
                a = h[n]
                if a.dtype == np.bool_:
                    step[n] = _tensor([bool(x) for x in a.ravel()], list(a.shape))
                elif a.dtype == np.int64:
                    step[n] = _tensor([int(x) for x in a.ravel()], list(a.shape))
                else:
                    step[n] = _tensor(_round(a), list(a.shape))
            return step

        if "user_tower" in labels:
            p = dump("user_tower", [hist_step(h) for h in hists])
            paths["user_tower"] = {c: p for s in specs if s.label == "user_tower" for c in s.concurrency}
        if "reranker" in labels:
            sess = _onnx_session(repository, "user_tower")
            steps = []
            C = ds.num_candidates
            for u, h in zip(chosen, hists):
                feed = {n: h[n][None] for n in names}
                user_vec = sess.run(["user_vector"], feed)[0][0]
                scores = matrix @ user_vec
                seen = [rows[e.item_id] for e in ds.events if e.user_id == u and e.item_id in rows]
                scores[seen] = -np.inf
                n = min(C, int(np.isfinite(scores).sum()))
                top = np.argsort(-scores)[:n]
                cand = np.zeros((C, matrix.shape[1]), np.float32)
                cand[:n] = matrix[top]
                mask = np.zeros(C, np.bool_)
                mask[:n] = True
                cs = np.zeros(C, np.float32)
                cs[:n] = scores[top]
                step = hist_step(h)
                step["candidate_vectors"] = _tensor(_round(cand), [C, matrix.shape[1]])
                step["candidate_mask"] = _tensor([bool(x) for x in mask], [C])
                step["candidate_scores"] = _tensor(_round(cs), [C])
                steps.append(step)
            p = dump("reranker", steps)
            paths["reranker"] = {c: p for s in specs if s.label == "reranker" for c in s.concurrency}
    if labels & {"text_encoder", "item_tower"}:
        from freshrec.models.text_encoder import Tokenizer

        picks = rng.choice(len(catalog), size=min(32, len(catalog)), replace=False)
        tok = Tokenizer(repository / "upsert_items" / "1", ds.max_tokens)
        ids, mask = tok([texts[j] for j in picks])
        if "text_encoder" in labels:  # one text per request, tokenised alone as upsert_items does
            steps = [{"input_ids": _tensor([int(x) for x in i[0]], [i.shape[1]]), "attention_mask": _tensor([int(x) for x in m[0]], [m.shape[1]])}
                     for i, m in (tok([texts[j]]) for j in picks)]  # fmt: skip
            p = dump("text_encoder", steps)
            paths["text_encoder"] = {c: p for s in specs if s.label == "text_encoder" for c in s.concurrency}
        if "item_tower" in labels:
            emb = _onnx_session(repository, "text_encoder").run(["text_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
            steps = [{"text_embedding": _round(e), "id_index": [int(catalog[j].id_index)]} for e, j in zip(emb, picks)]
            p = dump("item_tower", steps)
            paths["item_tower"] = {c: p for s in specs if s.label == "item_tower" for c in s.concurrency}
    for s in specs:
        if s.label == "ingest_events":
            in_catalog = {it.item_id for it in catalog}
            known = [e for e in ds.events if e.item_id in in_catalog] or ds.events
            paths[s.label] = {}
            for c in s.concurrency:
                n = s.requests + s.warmup
                picks = rng.integers(0, len(known), n)
                steps = []
                for i, j in enumerate(picks):
                    e = known[int(j)]
                    steps.append({
                        "user_id": _tensor([e.user_id], [1]), "item_id": _tensor([e.item_id], [1]),
                        "event_type": _tensor([e.event_type], [1]), "timestamp": _tensor([float(e.timestamp)], [1]),
                        "value": _tensor([None if math.isnan(e.value) else float(e.value)], [1]),
                        "event_id": _tensor([f"bench-{token}-c{c}-{i}"], [1]),
                    })  # fmt: skip
                for st in steps:  # NaN (no value) is not JSON: leave the optional input out
                    if st["value"]["content"][0] is None:
                        del st["value"]
                paths[s.label][c] = dump(f"ingest_events.c{c}", steps)
        if s.label == "upsert_items":
            paths[s.label] = {}
            for c in s.concurrency:
                n = s.requests + s.warmup
                picks = rng.integers(0, len(catalog), n)
                steps = [{"item_id": _tensor([f"bench-{token}-c{c}-{i}"], [1]), "text": _tensor([catalog[int(j)].text], [1]),
                          "metadata": _tensor([catalog[int(j)].metadata or "{}"], [1])} for i, j in enumerate(picks)]  # fmt: skip
                paths[s.label][c] = dump(f"upsert_items.c{c}", steps)
    return paths


# ---------------------------------------------------------------------------------------------
# perf_analyzer output
# ---------------------------------------------------------------------------------------------
_CSV_KEYS = {
    "Concurrency": "concurrency",
    "Inferences/Second": "throughput",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_server_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
    "Client Recv": "client_recv_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
    "Avg latency": "avg_us",
    "request/response": "grpc_marshal_us",
    "response wait": "grpc_response_wait_us",
}


def parse_csv(text: str) -> list[dict[str, float]]:
    """perf_analyzer's `-f` CSV -> one dict per concurrency row (times in microseconds)."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, float] = {}
        for k, v in raw.items():
            if k is None or v in (None, ""):
                continue
            key = _CSV_KEYS.get(k.strip(), re.sub(r"[^a-z0-9]+", "_", k.strip().lower()).strip("_"))
            try:
                row[key] = float(v)
            except ValueError:
                continue
        if "concurrency" in row:
            row["concurrency"] = int(row["concurrency"])
            rows.append(row)
    if not rows:
        raise ValueError("perf_analyzer CSV has no result rows")
    return rows


_LAT_RE = re.compile(r"Avg request latency: (\d+) usec \((.*)\)")
_TERM_RE = re.compile(r"([a-z][a-z ]*?) (\d+) usec")


def _breakdown(line: str) -> dict[str, int] | None:
    m = _LAT_RE.search(line)
    if not m:
        return None
    out = {"request_us": int(m.group(1))}
    for name, value in _TERM_RE.findall(m.group(2)):
        out[name.strip().replace(" ", "_") + "_us"] = int(value)
    return out


def parse_stdout(text: str) -> dict[int, dict[str, Any]]:
    """perf_analyzer's console report -> concurrency -> {"client", "server", "composing"}.

    The "Server" line of a BLS model whose composing models are listed aggregates them (its
    "overhead" then holds the parent's own compute); the composing lines are per model."""
    results: dict[int, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    section, composing_name = None, None
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"Request concurrency: (\d+)$", s)
        if m:
            current = results.setdefault(int(m.group(1)), {"client": {}, "server": {}, "composing": {}})
            section, composing_name = None, None
            continue
        if current is None:
            continue
        if s == "Client:":
            section = "client"
        elif s == "Server:":
            section = "server"
        elif s == "Composing models:":
            section = "composing"
        elif section == "composing" and (m := re.match(r"(\S+), version: (\S*)$", s)):
            composing_name = m.group(1)
            current["composing"][composing_name] = {}
        elif section == "client":
            if m := re.match(r"Request count: (\d+)", s):
                current["client"]["requests"] = int(m.group(1))
            elif m := re.match(r"Throughput: ([\d.]+) infer/sec", s):
                current["client"]["throughput"] = float(m.group(1))
            elif m := re.match(r"(p\d+|Avg) latency: (\d+) usec", s):
                current["client"][f"{m.group(1).lower()}_us"] = int(m.group(2))
        elif section in ("server", "composing"):
            target = current["server"] if section == "server" else current["composing"].get(composing_name, {})
            if m := re.match(r"(Inference|Execution|Successful request) count: (\d+)", s):
                target[m.group(1).lower().replace(" ", "_") + "_count"] = int(m.group(2))
            elif (b := _breakdown(s)) is not None:
                target.update(b)
    return results


def parse_profile_export(text: str) -> dict[str, Any]:
    """perf_analyzer's `--profile-export-file` JSON -> throughput over the measured requests, and
    each request's (send, last response) wall-clock ns as "spans" (for `freshrec.offline.benchmarks.jitter.attribute`).

    perf_analyzer's own throughput divides by its measurement window, which with `--request-count`
    ends at its next one-second poll, not at the last response: short runs read low. Here it is
    completed requests / (last response - first request), from the per-request timestamps."""
    data = json.loads(text)
    sends, done, lat = [], [], []
    for exp in data.get("experiments", []):
        for r in exp.get("requests", []):
            if not r.get("response_timestamps"):
                continue
            sends.append(r["timestamp"])
            done.append(max(r["response_timestamps"]))
            lat.append((max(r["response_timestamps"]) - r["timestamp"]) / 1e6)
    if len(sends) < 2:
        raise ValueError("profile export holds fewer than two completed requests")
    span = (max(done) - min(sends)) / 1e9
    q = np.percentile(lat, [50, 90, 99])
    return {"requests": len(sends), "seconds": span, "throughput": len(sends) / span,
            "p50_ms": float(q[0]), "p90_ms": float(q[1]), "p99_ms": float(q[2]), "spans": list(zip(sends, done))}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Triton's own statistics (per model, before/after each run)
# ---------------------------------------------------------------------------------------------
def triton_stats(grpc_url: str) -> dict[str, dict[str, int]]:
    """Cumulative inference statistics of every model: counts and nanoseconds."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    out = {}
    for m in stats.get("model_stats", []):
        inf = m.get("inference_stats", {})

        def get(key: str, part: str) -> int:
            return int(inf.get(key, {}).get(part, 0))

        out[m["name"]] = {
            "requests": get("success", "count"),
            "executions": int(m.get("execution_count", 0)),
            "request_ns": get("success", "ns"),
            "queue_ns": get("queue", "ns"),
            "compute_input_ns": get("compute_input", "ns"),
            "compute_infer_ns": get("compute_infer", "ns"),
            "compute_output_ns": get("compute_output", "ns"),
            "failures": get("fail", "count"),
        }
    return out


def stats_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Per model that served requests in between: averages per request in milliseconds;
    overhead = request latency - queue - compute (Triton's own bookkeeping, gRPC excluded)."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        d = {k: a[k] - b.get(k, 0) for k in a}
        n = d["requests"]
        if n <= 0:
            continue
        compute = d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"]
        out[name] = {
            "requests": n,
            "executions": d["executions"],
            "avg_batch": round(n / d["executions"], 2) if d["executions"] else None,
            "request_ms": d["request_ns"] / n / 1e6,
            "queue_ms": d["queue_ns"] / n / 1e6,
            "compute_input_ms": d["compute_input_ns"] / n / 1e6,
            "compute_infer_ms": d["compute_infer_ns"] / n / 1e6,
            "compute_output_ms": d["compute_output_ns"] / n / 1e6,
            "overhead_ms": (d["request_ns"] - d["queue_ns"] - compute) / n / 1e6,
            "failures": d["failures"],
        }
        out[name]["queue_plus_overhead_ms"] = out[name]["queue_ms"] + out[name]["overhead_ms"]
    return out


def _samples(metrics_url: str, *names: str) -> Iterator[Any]:
    """The samples named `names` on the server's metrics port (Prometheus text format)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        yield from (sample for sample in family.samples if sample.name in names)


def stage_stats(metrics_url: str) -> dict[tuple[str, str], tuple[float, float]]:
    """freshrec's own stage histograms (server_ext/metrics.py) from the metrics port:
    (model, stage) -> (count, sum of seconds), cumulative."""
    out: dict[tuple[str, str], list[float]] = {}
    for sample in _samples(metrics_url, "freshrec_stage_latency_seconds_count", "freshrec_stage_latency_seconds_sum"):
        key = (sample.labels.get("model", ""), sample.labels.get("stage", ""))
        out.setdefault(key, [0.0, 0.0])[sample.name.endswith("_sum")] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def served_index_recall(metrics_url: str) -> float | None:
    """The `recommend` index's self-checked recall@200 (freshrec_index_recall), None if unset."""
    values = [x.value for x in _samples(metrics_url, "freshrec_index_recall") if x.labels.get("model") == "recommend"]
    return min(values) if values else None


def stage_delta(before: dict, after: dict) -> dict[str, dict[str, dict[str, float]]]:
    """model -> stage -> {"calls", "ms"}: the mean time of each pipeline stage per call in between."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (model, stage), (n, total) in after.items():
        n0, t0 = before.get((model, stage), (0.0, 0.0))
        if n - n0 > 0:
            out.setdefault(model, {})[stage] = {"calls": int(n - n0), "ms": (total - t0) / (n - n0) * 1e3}
    return out


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
def pa_args(spec: Spec, concurrency: int, input_data: Path, grpc_url: str, csv_path: Path, composing: tuple[str, ...] = ()) -> list[str]:
    """perf_analyzer arguments (after the binary) for one run; `composing`: the BLS models the
    parent calls (only models that receive requests; none when the towers run in-process)."""
    args = [
        "-m", spec.model, "-i", "grpc", "-u", grpc_url,
        "--input-data", str(input_data),
        "--concurrency-range", str(concurrency),
        "--request-count", str(spec.requests),
        "--warmup-request-count", str(spec.warmup),
        "--percentile=99",
        "-f", str(csv_path), "--verbose-csv",
        "--profile-export-file", str(csv_path.with_suffix(".profile.json")),
    ]  # fmt: skip
    if composing:
        args += ["--bls-composing-models", ",".join(composing)]
    return args


def shown_command(args: list[str], out: Path) -> str:
    """The command line as a user reruns it by hand from the repository root (after
    `freshrec bench perf-analyzer` printed the perf_analyzer prefix for their machine)."""
    shown = []
    for a in args:
        p = Path(a)
        if p.is_absolute() and out in p.parents:
            a = str(Path(os.path.relpath(p, Path.cwd()))) if Path.cwd() in p.parents else str(p)
        shown.append(a)
    return "perf_analyzer " + " ".join(shlex.quote(a) for a in shown)


def _served_deploy(repository: Path, env: dict[str, str]):
    """The DeployConfig a server on `repository` with `env` runs its pipeline models with."""
    from freshrec.config import DeployConfig

    return DeployConfig.served(read_settings(repository)["deploy"], env)


@dataclass
class Server:
    name: str
    repository: Path
    state_url: str
    env: dict[str, str] = field(default_factory=dict)
    handle: Any = None

    @property
    def engine(self) -> str:
        """How its pipeline models run the towers: "bls" or "inprocess" (DeployConfig.engine)."""
        return _served_deploy(self.repository, self.env).resolved_engine()

    def start(self, work: Path, ready_timeout: float = 300.0) -> None:
        from freshrec.server_ext.launcher import start_on_free_ports

        env = {"FRESHREC_STATE": self.state_url, **self.env}
        # perf_analyzer reads model config, metadata and statistics over gRPC without the admin
        # header (its -H is HTTP-only), so this loopback-only benchmark server leaves them open.
        self.handle = start_on_free_ports(self.repository, env=env, work_dir=work / f"server-{self.name}",
                                          ready_timeout=ready_timeout, restricted_apis=())  # fmt: skip

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None


RUN_TIMEOUT_S = 60.0  # + 0.25 s per request: far beyond any run's length, short of hiding a hang
# perf_analyzer 2.60 now and then stalls after the server has answered every request it was to send
# (warm-up included): its worker threads have exited and it polls for records it never gets. A run
# still going this long after the server's statistics show all its requests answered has stalled.
STALL_GRACE_S = 15.0
POLL_S = 2.0  # how often a running run checks the server's statistics


def _answered(before: dict[str, dict[str, int]], server: Server, model: str) -> tuple[int, int]:
    """Requests of `model` the server completed and failed since `before`."""
    done = stats_delta(before, triton_stats(server.handle.grpc_url)).get(model, {})
    return int(done.get("requests", 0)), int(done.get("failures", 0))


def _watch(cmd: list[str], before: dict[str, dict[str, int]], server: Server, spec: Spec, timeout_s: float) -> tuple[str, str, int, str | None]:
    """Runs one perf_analyzer command to its end -> (stdout, stderr, exit code, None), or kills it
    when it has stalled or run past `timeout_s` -> (..., why)."""
    t0 = time.time()
    deadline, answered_at, why = t0 + timeout_s, None, None
    expected = spec.requests + spec.warmup
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=max(0.05, min(POLL_S, deadline - time.time())))
                    return out, err, proc.returncode, None
                except subprocess.TimeoutExpired:
                    pass
                now = time.time()
                if answered_at is None:
                    try:
                        if sum(_answered(before, server, spec.model)) >= expected:
                            answered_at = now
                    except Exception:  # noqa: BLE001 - the statistics are a stall check only; the deadline still holds
                        pass
                if now >= deadline:
                    why = f"did not finish in {timeout_s:.0f} s"
                elif answered_at is not None and now - answered_at >= STALL_GRACE_S:
                    why = f"still running {now - answered_at:.0f} s after the server had answered all {expected} requests ({now - t0:.0f} s in all)"
                if why:
                    proc.kill()
                    out, err = proc.communicate()
                    return out, err, proc.returncode, why
        except BaseException:  # interrupted: leave no perf_analyzer behind
            proc.kill()
            raise


def run_one(pa: list[str], spec: Spec, concurrency: int, input_data: Path, server: Server, raw: Path, tag: str = "",
            log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """One perf_analyzer run; returns the parsed CSV row, console report and Triton statistics."""
    raw.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.label}{tag}.c{concurrency}"
    csv_path = raw / f"{stem}.csv"
    engine = server.engine
    args = pa_args(spec, concurrency, input_data, server.handle.grpc_url, csv_path, spec.composing if engine == "bls" else ())
    # A run takes seconds. One that stalls (see STALL_GRACE_S) or outlasts this is cut off, logged
    # with what the server answered meanwhile and its log, and run once more.
    timeout_s = RUN_TIMEOUT_S + 0.25 * (spec.requests + spec.warmup)
    for attempt in (1, 2):
        # Read per attempt: a second attempt's statistics must not include the stalled first one.
        before, stages_before = triton_stats(server.handle.grpc_url), stage_stats(server.handle.metrics_url)
        t0 = time.time()
        with Probe() as probe:  # the machine's own slow bursts over the run (freshrec/jitter.py)
            out, err, returncode, stalled = _watch([*pa, *args], before, server, spec, timeout_s)
        if stalled is None:
            break
        kept = raw / f"{stem}.stalled{attempt}.log"
        try:  # did the server answer what it was sent? (perf_analyzer's count includes the warm-up)
            done, failed = _answered(before, server, spec.model)
            answered = f"the server completed {done} and failed {failed} {spec.model} requests meanwhile"
        except Exception as e:  # noqa: BLE001 - a diagnostic only
            answered = f"the server's statistics could not be read: {e}"
        kept.write_text(out + err + f"\n--- perf_analyzer {stalled}; {answered} ---\n--- tritonserver log ---\n" + server.handle.log_tail(60))
        for leftover in (csv_path, csv_path.with_suffix(".profile.json")):
            leftover.unlink(missing_ok=True)
        if attempt == 2:
            raise RuntimeError(f"perf_analyzer stalled on {spec.label} at concurrency {concurrency} twice ({stalled}); see {kept}")
        log(f"  {spec.label} c={concurrency}: perf_analyzer {stalled} ({answered}); its output and the server log "
            f"are in {kept}; running it again")  # fmt: skip
    seconds = time.time() - t0
    after, stages_after = triton_stats(server.handle.grpc_url), stage_stats(server.handle.metrics_url)
    (raw / f"{stem}.log").write_text(out + err)
    if returncode != 0 or not csv_path.exists():
        tail = "\n".join((out + err).strip().splitlines()[-25:])
        raise RuntimeError(f"perf_analyzer failed on {spec.label} at concurrency {concurrency} (exit {returncode}):\n{tail}\n"
                           f"--- tritonserver log ---\n{server.handle.log_tail(30)}")  # fmt: skip
    row = next(r for r in parse_csv(csv_path.read_text()) if r["concurrency"] == concurrency)
    profile_path = csv_path.with_suffix(".profile.json")
    profile = parse_profile_export(profile_path.read_text())
    profile_path.unlink()  # per-request timestamps and outputs: large, and summarised here
    console = parse_stdout(out).get(concurrency, {})
    server_stats = stats_delta(before, after)
    failures = sum(v["failures"] for v in server_stats.values())
    if failures:
        raise RuntimeError(f"{spec.label} at concurrency {concurrency}: {failures} failed requests on the server; see {raw / (stem + '.log')}")
    result = {
        "model": spec.model,
        "concurrency": concurrency,
        "requests": spec.requests,
        "warmup": spec.warmup,
        "seconds": round(seconds, 1),
        "throughput": profile["throughput"],
        "throughput_perf_analyzer": row["throughput"],
        "measured_seconds": profile["seconds"],
        "p50_ms": row["p50_us"] / 1e3,
        "p90_ms": row["p90_us"] / 1e3,
        "p95_ms": row.get("p95_us", math.nan) / 1e3,
        "p99_ms": row["p99_us"] / 1e3,
        "csv": row,
        "perf_analyzer_server": console.get("server", {}),
        "perf_analyzer_composing": console.get("composing", {}),
        "server": server_stats,
        "engine": engine,
        "stages": stage_delta(stages_before, stages_after),
        "machine_bursts": attribute(profile["spans"], probe.samples),
        "attempts": attempt,
        "command": shown_command(args, raw.parent),
        "input_data": str(input_data),
    }
    srv, mb = server_stats.get(spec.model, {}), result["machine_bursts"]
    log(f"  {spec.label:16s} c={concurrency:<2d} {result['throughput']:8.1f}/s  p50 {result['p50_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:7.2f} ms  queue+overhead {srv.get('queue_plus_overhead_ms', math.nan):.3f} ms  ({seconds:.0f}s)"
        + (f"  slowest 1% in machine bursts: {mb['slowest_1pct_in_bursts']}/{mb['slowest_1pct']}" if mb else ""))  # fmt: skip
    return result


def _copy_sqlite(url: str, dest: Path) -> str:
    if not url.startswith("sqlite:///"):
        return url  # Redis etc.: served as is (the writes of the bench land there)
    from freshrec.store.sqlite import copy_sqlite

    copy_sqlite(Path(url[len("sqlite:///") :]), dest)
    return f"sqlite:///{dest}"


# -- repository variants for the tuning study --------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
@dataclass
class BenchOptions:
    build: Path = Path("build")
    repository: Path | None = None  # default: the build's embedded repository
    out: Path = Path("docs/benchmarks")
    smoke: bool = False
    state: str | None = None
    catalog_items: int | None = None
    index: str | None = None  # FRESHREC_INDEX for the server
    only: tuple[str, ...] = ()
    concurrency: tuple[int, ...] | None = None
    compare: bool = False
    compare_rounds: int = 3
    work: Path | None = None
    keep_work: bool = False
    requests: int | None = None  # measured requests per run (default: per model, see plan())
    name: str | None = None  # run name (default: main, or catalog_<N>[_<index>])
    write_docs: bool = True
    seed: int = 0


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


def _run_name(opts: BenchOptions) -> str:
    if opts.name:
        return opts.name
    if opts.catalog_items:
        return f"catalog_{opts.catalog_items}" + (f"_{opts.index}" if opts.index else "")
    return "main"


def prewarm(server: Server, users: list[str], instances: int = 2, timeout_s: float = 900.0, log: Callable[[str], None] = print) -> float:
    """Concurrent recommend calls until every instance has refreshed its index (the first call
    of an instance loads the catalog and, for hnsw, builds the graph); returns the seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    from freshrec.client import FreshrecClient

    t0 = time.time()
    client = FreshrecClient(server.handle.grpc_url, timeout_s=timeout_s)
    try:
        with ThreadPoolExecutor(2 * instances) as pool:
            for round_ in range(20):
                t1 = time.time()
                list(pool.map(lambda u: client.recommend(u, k=10), (users * (2 * instances))[: 2 * instances]))
                if time.time() - t1 < 1.0 and round_ >= 1:
                    break
    finally:
        if hasattr(client, "close"):
            client.close()
    seconds = time.time() - t0
    log(f"   pre-warmed recommend in {seconds:.1f}s")
    return seconds


def server_memory(server: Server) -> dict[str, Any]:
    """Resident memory of the server and its Python-backend stubs, per model (MiB)."""
    by_model: dict[str, float] = {}
    total = 0.0
    for pid in server.handle.group_pids():
        try:
            rss = rss_bytes(pid) / 2**20
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        total += rss
        name = "tritonserver"
        for part in cmd:
            m = re.search(rb"/([^/]+)/\d+/model\.py$", part)
            if m:
                name = m.group(1).decode()
                break
        by_model[name] = by_model.get(name, 0.0) + rss
    return {"total_rss_mib": round(total, 1), "by_model_rss_mib": {k: round(v, 1) for k, v in sorted(by_model.items())}}


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
    name = _run_name(opts)
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
            state_url = _copy_sqlite(source_state, work / "state.db")
        token = time.strftime("%Y%m%d%H%M%S")
        log(f"== input data from {state_url} -> {inputs_dir}")
        ds = Dataset.load(state_url, repo)
        inputs = generate_inputs(ds, repo, specs, inputs_dir, token, opts.seed)
        n_items, warm_users = len(ds.items), ds.users[:8]
        del ds
        from freshrec.index import resolve_kind

        env = {"FRESHREC_INDEX": opts.index} if opts.index else {}
        served = _served_deploy(repo, env)
        index_setting = served.index
        index = resolve_kind(index_setting, n_items)  # what the (CPU) server searches with at this size
        # The servers' graph cache lives in the work folder: a first start builds the graph once
        # (the other instance loads it); a reused --work folder starts from the saved graph.
        graphs = work / "graphs"
        if graphs.exists() and any(graphs.glob("hnsw-*.usearch")):
            log(f"   graph cache {graphs} holds saved graphs: ready time is a load, not a build")
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
        log(f"   server memory after warm-up: {memory['total_rss_mib']:.0f} MiB; index self-checked recall@200: {_f(recall, 4)}")
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
            "server_ready_seconds": round(ready_s, 1),
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
    one = {"FRESHREC_TORCH_THREADS": "1"}
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
        st = _copy_sqlite(state_url, work / f"state-{name}.db")
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


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _f(x: float | None, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _burst_note(r: dict[str, Any]) -> str:
    """What the machine's slow bursts (freshrec.offline.benchmarks.jitter) did to one run's tail, for a p99 target."""
    mb = r.get("machine_bursts")
    if not mb:
        return ""
    return (f"; {mb['slowest_1pct_in_bursts']} of the {mb['slowest_1pct']} slowest requests overlapped one of the machine's slow "
            f"bursts ({100 * mb['requests_in_bursts'] / mb['requests']:.0f}% of all requests did); the p99 of the requests outside "
            f"them: {mb['p99_outside_bursts_ms']:.2f} ms (see *The machine's slow bursts*)")  # fmt: skip


def _recommend_targets(run: dict[str, Any], add: Callable[..., None]) -> None:
    rec = run["results"].get("recommend", {})
    if not rec:
        return
    items = run.get("catalog_items_served") or 0
    where = f"{items:,} items, index {run.get('index', 'exact')}"
    ok = [r for r in rec.values() if r["p99_ms"] <= 60.0]
    best = max((r["throughput"] for r in ok), default=0.0)
    sweep = f"best over concurrency {','.join(rec)} with p99 <= 60 ms"
    if items >= 500_000:
        recall = run.get("index_recall")
        served = f"the served index's self-checked recall@200 {recall:.4f}, " if recall is not None else ""
        add("1M items: >= 50 recommendations/s with p99 <= 60 ms", best, 50.0, le=False,
            note=f"{where}; {sweep}; {served}recall@200 with user queries: see the index benchmark")  # fmt: skip
        return
    scale = "100k items: " if items >= 50_000 else ""
    where = where if items >= 50_000 else f"{where} (the issue sets this target at 100k items)"
    if "1" in rec:
        add(f"{scale}recommend concurrency 1 p50 <= 8 ms", rec["1"]["p50_ms"], 8.0, note=where)
        add(f"{scale}recommend concurrency 1 p99 <= 20 ms", rec["1"]["p99_ms"], 20.0, note=where + _burst_note(rec["1"]))
    add(f"{scale}>= 100 recommendations/s with p99 <= 60 ms", best, 100.0, le=False, note=f"{where}; {sweep}")


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's CPU targets that these runs measure, met or missed (main run, then catalogs)."""
    res = summary["results"]
    out = []

    def add(target: str, measured: float, bound: float, le: bool = True, note: str = "") -> None:
        met = measured <= bound if le else measured >= bound
        out.append({"target": target, "measured": measured, "bound": bound, "met": bool(met), "unit": "ms" if le else "/s", "note": note})

    _recommend_targets(summary, add)
    for run in summary.get("catalogs", {}).values():
        _recommend_targets(run, add)
    if "1" in res.get("ingest_events", {}):
        add("ingest_events p99 <= 5 ms (one event)", res["ingest_events"]["1"]["p99_ms"], 5.0, note="concurrency 1" + _burst_note(res["ingest_events"]["1"]))
    if "1" in res.get("upsert_items", {}):
        add("upsert_items p99 <= 30 ms (one item)", res["upsert_items"]["1"]["p99_ms"], 30.0, note="concurrency 1" + _burst_note(res["upsert_items"]["1"]))
    for label, by_c in res.items():
        r1 = by_c.get("1")
        if not r1:
            continue
        models = [r1["model"], *COMPOSING.get(label, ())]
        for m in models:
            s = r1["server"].get(m)
            if s:
                where = f" (inside {label})" if m != r1["model"] else (f" ({label} run)" if label != m else "")
                add(f"Triton queue + overhead <= 0.3 ms at concurrency 1: {m}{where}",
                    s["queue_plus_overhead_ms"], 0.3)  # fmt: skip
    return out


def assemble(out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """serving.md and summary.json from every run in `out/runs/`: the main run's figures at the
    top level, the catalog-scale runs under "catalogs"."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}
    if not runs:
        raise FileNotFoundError(f"no runs in {out / 'runs'}")
    main_name = "main" if "main" in runs else max(runs, key=lambda k: runs[k]["date_utc"])
    summary = dict(runs[main_name])
    summary["catalogs"] = {k: v for k, v in runs.items() if k != main_name and v.get("catalog")}
    write_docs(summary, out, log)
    return summary


def plot(summary: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    res = summary["results"]
    sweeps = {k: v for k, v in res.items() if len(v) > 1}
    if not sweeps:
        return files
    n = len(sweeps)
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(5 * cols, 3.8 * ((n + cols - 1) // cols)), squeeze=False)
    for ax, (label, by_c) in zip(axes.ravel(), sweeps.items()):
        cs = sorted(by_c, key=int)
        thr = [by_c[c]["throughput"] for c in cs]
        for key, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^-")):
            ax.plot(thr, [by_c[c][key] for c in cs], style, label=key.replace("_ms", ""))
        for c, x, y in zip(cs, thr, [by_c[c]["p99_ms"] for c in cs]):
            ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if label == "recommend":
            ax.axhline(60, color="grey", lw=0.8, ls=":")
            ax.axvline(100, color="grey", lw=0.8, ls=":")
        ax.set_title(label)
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"perf_analyzer over gRPC, concurrency sweeps ({summary['machine']['cores']} cores, {summary['catalog_items_served']:,} items)")
    fig.tight_layout()
    path = out / "serving_latency_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)
    scale = {f"{summary['catalog_items_served']:,} items ({summary['index']})": summary["results"].get("recommend", {})}
    for run in summary.get("catalogs", {}).values():
        scale[f"{run['catalog_items_served']:,} items ({run['index']})"] = run["results"].get("recommend", {})
    scale = {k: v for k, v in scale.items() if len(v) > 1}
    if len(scale) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, by_c in scale.items():
            cs = sorted(by_c, key=int)
            line = ax.plot([by_c[c]["throughput"] for c in cs], [by_c[c]["p99_ms"] for c in cs], "o-", label=f"{label} p99")[0]
            ax.plot([by_c[c]["throughput"] for c in cs], [by_c[c]["p50_ms"] for c in cs], "s--", color=line.get_color(), alpha=0.6, label=f"{label} p50")
            for c in cs:
                ax.annotate(f"c={c}", (by_c[c]["throughput"], by_c[c]["p99_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(60, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("recommendations/s")
        ax.set_ylabel("latency (ms)")
        ax.set_title("recommend at catalog scale (perf_analyzer, gRPC)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "serving_catalog_scale.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return files


def write_docs(summary: dict[str, Any], out: Path, log: Callable[[str], None] = print) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary["targets"] = targets(summary)
    summary["plots"] = plot(summary, out)
    # Runs that hung once and ran again (run_one) left their evidence in raw/ (cleared per run).
    summary["stalled"] = sorted(str(p.relative_to(out)) for p in (out / "raw").glob("**/*.stalled*.log"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out / "serving.md").write_text(render_md(summary))
    log(f"== wrote {out / 'serving.md'}, {out / 'summary.json'}" + "".join(f", {out / p}" for p in summary["plots"]))


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
              "same repository with `FRESHREC_STATE`; `FRESHREC_INDEX` selects the retrieval index. Memory: resident set of "
              "tritonserver and every Python-backend stub after the warm-up (the two `recommend` instances each hold the item "
              "matrix and, for hnsw, the graph). Recall: the served index's own check against the exact scan on 32 sampled "
              "queries (`freshrec_index_recall`; 1 for the exact scan).", "",
              "| catalog | index | c=1 p50 ms | c=1 p99 ms | best /s with p99 <= 60 ms | recall@200 (self-check) | server RSS MiB | recommend stubs RSS MiB | ready s | warm-up s |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in runs.items():
            rec = r["results"].get("recommend", {})
            if not rec:
                continue
            best = max((x["throughput"] for x in rec.values() if x["p99_ms"] <= 60.0), default=0.0)
            mem = r.get("memory_after_warmup") or {}
            L.append(f"| {r['catalog_items_served']:,} | {r['index']} | {_f(rec.get('1', {}).get('p50_ms'))} | {_f(rec.get('1', {}).get('p99_ms'))} | "
                     f"{_f(best, 1)} | {_f(r.get('index_recall'), 4)} | {_f(mem.get('total_rss_mib'), 0)} | "
                     f"{_f((mem.get('by_model_rss_mib') or {}).get('recommend'), 0)} | "
                     f"{_f(r.get('server_ready_seconds'), 0)} | {_f(r.get('prewarm_seconds'), 0)} |")  # fmt: skip
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
                L.append(f"| {r['catalog_items_served']:,} | {r['index']} | {c} | {_f(x['throughput'], 1)} | {_f(x['p50_ms'])} | {_f(x['p90_ms'])} | "
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
          "on this machine (on glibc < 2.38: the Debian 13 loader). Start a server with the statistics API open "
          "(`ServerOptions(restricted_apis=())`; perf_analyzer's `-H` does not reach gRPC) and replace the `-u` address. "
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
    rows = [(s["catalog_items_served"], s["index"], label, c, r) for label, by_c in s["results"].items() for c, r in by_c.items()]
    rows += [(x["catalog_items_served"], x["index"], label, c, r) for x in cats.values() for label, by_c in x["results"].items() for c, r in by_c.items()]
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

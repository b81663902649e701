"""Prequential replay (EVALUATION.md, timeliness): the world as of a global time T0, then every
later event in time order. Before an event is applied, its user asks for recommendations and
the event's item is scored against them; then (in real time) the event is ingested. An item
first seen after T0 enters through the item-upsert path, by its text alone, at its first
appearance, just before the request that may recommend it.

One loop drives every target: the served gRPC API of a real tritonserver, the same pipeline
in-process (`Recommender` over the PyTorch modules), and popularity, so that their figures come
from the same requests.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from freshrec.training.data import Dataset
from freshrec.training.metrics import rank_metrics

MISS = 10**9  # rank of a target that is not in the returned list


@dataclass(frozen=True)
class ReplayEvent:
    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    value: float
    event_id: str
    new_item: bool  # first appearance of an item unknown at T0: upsert it before the request
    text: str = ""  # the item's text (used only when new_item)
    metadata: str = "{}"


def replay_stream(ds: Dataset, t0: float, limit: int | None = None) -> list[ReplayEvent]:
    """Events with timestamp >= T0 in time order (ties in source order); items that no event
    before T0 touched are flagged new at their first appearance."""
    e = ds.events
    known = set(e.item_id[e.timestamp < t0].tolist())
    rows = np.flatnonzero(e.timestamp >= t0)
    rows = rows[np.lexsort((e.order[rows], e.timestamp[rows]))]
    if limit is not None:
        rows = rows[:limit]
    at = ds.items.index()
    out = []
    for j in rows:
        item = e.item_id[j]
        new = item not in known
        known.add(item)
        i = at[item]
        value = float(e.value[j])
        out.append(ReplayEvent(
            e.user_id[j], item, e.event_type[j], float(e.timestamp[j]), value, f"{ds.name or 'data'}:{e.order[j]}", new,
            ds.items.text[i] if new else "", json.dumps(ds.items.metadata[i], sort_keys=True) if new else "{}",
        ))  # fmt: skip
    return out


class Target(Protocol):
    """What the replay talks to: the served API, the in-process pipeline, or a baseline."""

    def recommend(self, user_id: str, k: int) -> list[str]: ...

    def ingest(self, event: ReplayEvent) -> None: ...

    def upsert(self, event: ReplayEvent) -> None: ...


@dataclass
class ReplayResult:
    name: str
    ranks: np.ndarray  # (n,) 0-based rank of the event's item in the returned list, MISS if absent
    top10: list[list[str]]
    seconds: float
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per event; NaN where no call was made


def run_replay(
    name: str, stream: list[ReplayEvent], target: Target, *, k: int = 50, realtime: bool = True,
    log: Callable[[str], None] = print, every: int = 2000, clock: Callable[[float], None] | None = None,
) -> ReplayResult:  # fmt: skip
    """Asks `target` for each event's user before applying the event. `realtime=False` is the
    frozen variant: nothing is applied, so the answers are those of the state at T0. `clock` is
    told each event's timestamp before its request (a target that updates its model on a
    schedule of event time)."""
    ranks = np.full(len(stream), MISS, np.int64)
    top10, latency = [], np.full(len(stream), np.nan)  # NaN: answered from the frozen cache
    frozen_cache: dict[str, list[str]] = {}  # frozen state: a user's answer never changes
    t_start = time.time()
    for n, ev in enumerate(stream):
        if clock is not None:
            clock(ev.timestamp)
        if realtime and ev.new_item:
            target.upsert(ev)
        if realtime or ev.user_id not in frozen_cache:
            t = time.perf_counter()
            items = target.recommend(ev.user_id, k)
            latency[n] = (time.perf_counter() - t) * 1e3
            frozen_cache[ev.user_id] = items
        else:
            items = frozen_cache[ev.user_id]
        if ev.item_id in items:
            ranks[n] = items.index(ev.item_id)
        top10.append(items[:10])
        if realtime:
            target.ingest(ev)
        if (n + 1) % every == 0 or n + 1 == len(stream):
            hr = float((ranks[: n + 1] < 10).mean())
            log(f"replay {name}: {n + 1}/{len(stream)} events, HR@10 so far {hr:.4f} ({time.time() - t_start:.0f}s)")
    return ReplayResult(name, ranks, top10, round(time.time() - t_start, 1), latency)


def windowed(ranks: np.ndarray, stream: list[ReplayEvent], windows: int) -> list[dict]:
    """HR@10 / NDCG@10 over equal-count windows of the replay, in time order."""
    out = []
    for idx in np.array_split(np.arange(len(stream)), windows):
        if len(idx) == 0:
            continue
        m = rank_metrics(ranks[idx], (10,))[10]
        out.append({"start": stream[idx[0]].timestamp, "end": stream[idx[-1]].timestamp, "events": int(len(idx)), "hr": m["hr"], "ndcg": m["ndcg"]})
    return out


# -- targets ---------------------------------------------------------------------------------
class PipelineTarget:
    """The served pipeline's own code in-process: `Recommender` over the PyTorch reference
    modules and a private copy of the build's SQLite state."""

    def __init__(self, build_dir: Path, state_copy: Path) -> None:
        from freshrec.config import DeployConfig
        from freshrec.serving.engines import load_reference
        from freshrec.serving.pipeline import Recommender
        from freshrec.store import open_store
        from freshrec.store.sqlite import copy_sqlite

        copy_sqlite(Path(build_dir) / "state.db", state_copy)
        engine, tokenizer, cfg = load_reference(Path(build_dir))
        # TTL 0: the popularity fallback reads the store on each call, as a served replay that
        # runs slower than the TTL effectively does.
        self.rec = Recommender(open_store(f"sqlite:///{state_copy}"), engine, tokenizer, cfg, DeployConfig(), popular_ttl_s=0.0)

    def recommend(self, user_id: str, k: int) -> list[str]:
        return self.rec.recommend(user_id, k).item_ids

    def ingest(self, ev: ReplayEvent) -> None:
        from freshrec.store.base import Event

        self.rec.ingest([Event(ev.user_id, ev.item_id, ev.event_type, ev.timestamp, ev.value, ev.event_id)])

    def upsert(self, ev: ReplayEvent) -> None:
        self.rec.upsert([ev.item_id], [ev.text], [ev.metadata])

    def close(self) -> None:
        self.rec.store.close()


class ServedTarget:
    """The served gRPC API of a real tritonserver, through the project's client."""

    def __init__(self, url: str) -> None:
        from freshrec.client.grpc_client import FreshrecClient

        self.client = FreshrecClient(url, timeout_s=30.0)

    def recommend(self, user_id: str, k: int) -> list[str]:
        return self.client.recommend(user_id, k).item_ids

    def ingest(self, ev: ReplayEvent) -> None:
        from freshrec.client.grpc_client import EventIn

        value = None if math.isnan(ev.value) else ev.value
        self.client.ingest([EventIn(ev.user_id, ev.item_id, ev.event_type, ev.timestamp, value, ev.event_id)])

    def upsert(self, ev: ReplayEvent) -> None:
        from freshrec.client.grpc_client import ItemIn

        self.client.upsert_items([ItemIn(ev.item_id, ev.text, json.loads(ev.metadata))])

    def close(self) -> None:
        self.client.close()


class PopularityTarget:
    """Most-interacted items not yet seen by the user, counted over every event before the
    request (pre-T0 ones, plus replayed ones in real time), or with `window` over only the latest
    `window` events (as the served fallback counts). New items join as they are upserted."""

    def __init__(self, ds_before: Dataset, window: int | None = None) -> None:
        from collections import deque

        e = ds_before.events
        order = np.lexsort((e.order, e.timestamp))
        items = e.item_id[order].tolist()
        self.window = window
        self.recent: deque[str] = deque(items[-window:] if window else [], maxlen=window)
        self.counts = Counter(self.recent if window else items)
        self.catalog = set(ds_before.items.item_id)
        self.seen: dict[str, set[str]] = {}
        for u, i in zip(e.user_id.tolist(), e.item_id.tolist()):
            self.seen.setdefault(u, set()).add(i)

    def recommend(self, user_id: str, k: int) -> list[str]:
        seen = self.seen.get(user_id, set())
        ranked = sorted(self.catalog, key=lambda i: (-self.counts.get(i, 0), i))
        out = []
        for i in ranked:
            if i not in seen:
                out.append(i)
                if len(out) == k:
                    break
        return out

    def ingest(self, ev: ReplayEvent) -> None:
        if self.window and len(self.recent) == self.window:
            self.counts[self.recent[0]] -= 1  # the oldest event leaves the window
        if self.window:
            self.recent.append(ev.item_id)
        self.counts[ev.item_id] += 1
        self.seen.setdefault(ev.user_id, set()).add(ev.item_id)

    def upsert(self, ev: ReplayEvent) -> None:
        self.catalog.add(ev.item_id)

    def close(self) -> None:
        pass


# -- freshness latency through the served API ------------------------------------------------
def freshness_latency(url: str, users: list[str], new_item_texts: list[str], trials: int = 100, timeout_s: float = 5.0) -> dict:
    """Acknowledged ingest -> first recommendation that reflects it, through the served API.

    Events: the user interacts with the item currently first in their top-10; it is reflected
    when a recommendation no longer offers it (seen items are never recommended).
    New items: an item is upserted with a fresh id; it is reflected when a query for its exact
    text (a new user, so the query alone decides) lists it in the top-10 (not necessarily first:
    the texts are catalog texts with an edition number, and a first-time visitor's query ranks
    near-identical texts by a small popularity prior as well).
    Each latency is measured from the moment the write call returned (the acknowledgement).
    """
    import uuid

    from freshrec.client.grpc_client import EventIn, FreshrecClient, ItemIn

    client = FreshrecClient(url, timeout_s=30.0)
    out: dict[str, dict] = {}
    ev_ms, ev_polls = [], []
    for n in range(trials):
        user = users[n % len(users)]
        item = client.recommend(user, 10).item_ids[0]
        client.ingest([EventIn(user, item, "click")])
        acked = time.perf_counter()
        polls = 0
        while True:
            polls += 1
            if item not in client.recommend(user, 10).item_ids:
                break
            if time.perf_counter() - acked > timeout_s:
                raise AssertionError(f"event for {user!r} on {item!r} not reflected within {timeout_s} s")
        ev_ms.append((time.perf_counter() - acked) * 1e3)
        ev_polls.append(polls)
    it_ms, it_polls = [], []
    for n in range(trials):
        item = f"fresh-{uuid.uuid4().hex[:12]}"
        text = f"{new_item_texts[n % len(new_item_texts)]} (edition {n})"  # distinct texts: one exact match
        client.upsert_items([ItemIn(item, text, {})])
        acked = time.perf_counter()
        polls = 0
        while True:
            polls += 1
            if item in client.recommend(f"freshness-probe-{n}", 10, query=text).item_ids:
                break
            if time.perf_counter() - acked > timeout_s:
                raise AssertionError(f"item {item!r} not recommended for its own text within {timeout_s} s")
        it_ms.append((time.perf_counter() - acked) * 1e3)
        it_polls.append(polls)
    client.close()
    for name, ms, polls in (("event", ev_ms, ev_polls), ("item", it_ms, it_polls)):
        out[name] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "trials": len(ms), "first_request_reflects": float(np.mean(np.asarray(polls) == 1)),
        }  # fmt: skip
    return out

"""Responsiveness (EVALUATION.md): what a user sees on the very next request after acting.

Every figure of freshrec comes from a real tritonserver over the gRPC API (`FreshrecClient`):
events go in through `ingest`, new items through `upsert_items`, lists come from `recommend`.
Nothing here assumes how the pipeline reacts; it only asks and counts. Each scenario runs on
its own private copy of the build's state (the `eval` serve state: each user's test event held
out) with a server of its own, so no scenario's writes reach another. Fixed seed.

Scenarios:
  shift     users with a genre under 3% of their history (genres with >= 40 films); N = 1, 2, 4,
            8 five-star `rate` events on unseen popular films of it, applied incrementally, after
            the user's last event; the genre's share of the top-10 / top-50 and the users with
            >= 3 of 10. The N = 0 list excludes the 8 films, so the seen-item mask alone cannot
            move the share.
  negative  a genre the user likes (>= 10% of history, >= 1.5x its catalog share); 4 or 8 events
            of one kind (`rate` 1.0, `dislike`, `skip`) on unseen popular films of it; its share
            before (those films excluded) and after; fall = 1 - after / before.
  intent    typed intents (genre, mood, era, "something like <title>"), each with a match
            predicate on the item metadata; a cold user (no events) and warm users; "kept" = how
            many of a warm user's own top-10 (no query) stay in the top-10 with the query.
  twins     catalog items re-added as `twin:<id>` (same text, same metadata); ranked for the users
            whose held-out test event is the original (unseen in this state): the twin with the
            original excluded, the original with the twin excluded, k up to `DeployConfig.max_k`.

Categories: the items' genres (MovieLens, or own items whose metadata has `genres`), or, for a
catalog whose items carry none, each item's dominant topic of the build's LDA model (labelled
`t<k> <its top words>`): `shift`, `negative` and `twins` then run on any data; `intent`'s
predicates read MovieLens's genres and years and stay with it.

Every user of `shift` and `negative` is a clone `<user>~<scenario>` of a real user: its events
are the real user's stored events, written into the scenario's state copy through the store
interface before the server starts, so every target sees the same history and the real users
stay as they are.

Context rows, in-process over the same scenario states through the store interface: popularity
(counts over the latest events of the state, frozen at the start) and a kNN over the user's last
10 events (item-item cosine of co-occurrence in the state's user x item matrix; a rating weighs
(value - 3) / 2, `dislike` -1, `skip` -0.5, any other event +1). Both ignore a typed query.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from freshrec.store.base import Event
from freshrec.training.data import Dataset

SHIFT_NS = (1, 2, 4, 8)
NEG_NS = (4, 8)
NEG_KINDS = (("rate", 1.0), ("dislike", math.nan), ("skip", math.nan))
MIN_GENRE_ITEMS = 40  # genres with fewer films give too few unseen popular ones to act on
POOL = 40  # the films acted on are drawn from the user's POOL most popular unseen films of the genre
MIN_HISTORY = 10  # users with fewer stored events have no history a genre share means much for
WARM_MIN_EVENTS = 20
POP_WINDOW = 10_000  # popularity counts the latest events, as the served popularity fallback does
KNN_LAST = 10
AFTER_S = 3600.0  # the scenario's first event comes an hour after the user's last one, then one a minute


@dataclass(frozen=True)
class ResponsivenessOptions:
    seed: int = 0
    shift_users: int = 150  # the issue asks for >= 100
    negative_users: int = 120
    warm_users: int = 40
    twins: int = 120  # catalog items given a twin (the issue asks for >= 100)
    scenarios: tuple[str, ...] = ("shift", "negative", "intent", "twins")
    separate_states: bool = False  # a state copy and a server per scenario instead of per GROUPS entry
    categories: str = "genres"  # what shift and negative act on: "genres" (item metadata) or "topics" (the build's LDA)


SCENARIOS = ("shift", "negative", "intent", "twins")
# Scenarios that share a state copy and a server. `intent` only reads (real users and a cold
# one) and runs before `twins` writes its items; `shift` and `negative` write only the events
# of their own clones (they share the state's global counts, e.g. the latest events).
GROUPS = (("intent", "twins"), ("shift", "negative"))


# -- intents ---------------------------------------------------------------------------------
def _g(*gs: str) -> Callable[[dict], bool]:
    return lambda m: bool(set(m["genres"]) & set(gs))


def _era(lo: int, hi: int, *gs: str) -> Callable[[dict], bool]:
    return lambda m: m["year"] is not None and lo <= m["year"] <= hi and (not gs or bool(set(m["genres"]) & set(gs)))


INTENTS: list[tuple[str, str, Callable[[dict], bool]]] = [
    # (kind, the text as typed, match predicate on the item metadata)
    ("genre", "a western with cowboys", _g("Western")),
    ("genre", "war movie about soldiers", _g("War")),
    ("genre", "scary horror film", _g("Horror")),
    ("genre", "sci-fi space adventure", _g("Sci-Fi")),
    ("genre", "animated cartoon for kids", _g("Animation", "Children's")),
    ("genre", "a documentary", _g("Documentary")),
    ("genre", "musicals with songs and dancing", _g("Musical")),
    ("genre", "film noir detective", _g("Film-Noir", "Mystery", "Crime")),
    ("genre", "romantic comedy", lambda m: {"Romance", "Comedy"} <= set(m["genres"])),
    ("genre", "crime thriller", _g("Crime", "Thriller")),
    ("mood", "something funny to cheer me up", _g("Comedy")),
    ("mood", "i want to be scared tonight", _g("Horror", "Thriller")),
    ("mood", "a feel good family movie", _g("Children's", "Animation")),
    ("mood", "edge of my seat suspense", _g("Thriller", "Mystery")),
    ("mood", "a romantic movie for date night", _g("Romance")),
    ("mood", "explosions and car chases", _g("Action")),
    ("era", "old black and white classics from the 1940s", _era(1930, 1949)),
    ("era", "movies from the 50s", _era(1950, 1959)),
    ("era", "70s films", _era(1970, 1979)),
    ("era", "80s action movies", _era(1980, 1989, "Action")),
    ("like", "something like Star Wars", _g("Sci-Fi")),
    ("like", "something like Toy Story", _g("Animation", "Children's")),
    ("like", "movies like Pulp Fiction", _g("Crime")),
    ("like", "something like Scream", _g("Horror")),
    ("like", "something like Sleepless in Seattle", _g("Romance")),
    ("like", "films like Schindler's List", _g("War")),
]


# -- what the scenarios know of the world (read from the state through the store interface) ---
@dataclass
class World:
    ids: list[str]  # the state's catalog, in catalog order
    meta: dict[str, dict]  # item id -> {"genres", "year", "title"}
    count: Counter  # events per item in the state
    history: dict[str, list[Event]]  # stored events per user, time order
    held_out: dict[str, str]  # user -> the item of their test event, absent from the state
    recent: Counter = field(default_factory=Counter)  # events per item over the latest POP_WINDOW events

    def seen(self, user: str) -> set[str]:
        return {e.item_id for e in self.history[user]}


TOPIC_LABEL_WORDS = 3


def topic_categories(item_ids: Sequence[str], mixtures: np.ndarray, model) -> dict[str, list[str]]:
    """Item id -> [its dominant topic's label], from the topic mixtures the state holds (the ones
    the build and `upsert_items` wrote, which the served explanation reads); an item stored
    without one, or with a flat one (no known word), gets none."""
    if mixtures.shape[1] != model.n_topics:
        raise ValueError(f"the state holds no topic mixtures of the build's {model.n_topics} topics (rebuild)")
    labels = [f"t{k} " + " ".join(model.top_words(k, TOPIC_LABEL_WORDS)) for k in range(model.n_topics)]
    flat = 1.0 / model.n_topics + 1e-6
    return {i: [labels[int(np.argmax(m))]] if m.max() > flat else [] for i, m in zip(item_ids, mixtures)}


def load_world(ds: Dataset, store, categories: dict[str, list[str]] | None = None) -> World:
    """The state as the scenarios see it; `categories` (item id -> labels) replaces the items'
    genres (`topic_categories`)."""
    from freshrec.training.data import temporal_leave_one_out

    events = list(store.events())
    history: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        history[e.user_id].append(e)
    for evs in history.values():
        evs.sort(key=lambda e: e.timestamp)  # stable: arrival order breaks ties
    ids = list(store.item_vectors_since(0)[0])
    at = ds.items.index()
    meta = {}
    for i in ids:
        m = ds.items.metadata[at[i]] if i in at else {}
        genres = list(m.get("genres") or []) if categories is None else categories.get(i, [])
        meta[i] = {"genres": genres, "year": m.get("year"), "title": m.get("title", i)}
    split = temporal_leave_one_out(ds)
    held = {}
    for u, j in split.test.items():
        item = ds.events.item_id[j]
        if u in history and item in meta and item not in {e.item_id for e in history[u]}:
            held[u] = item
    return World(ids, meta, Counter(e.item_id for e in events), dict(history), held,
                 Counter(e.item_id for e in events[-POP_WINDOW:]))  # fmt: skip


def geometry(w: World, store, seeds: int = 8, k: int = 10) -> dict:
    """Where a genre's meaning lives: for each genre, the mean of its `seeds` most stored films'
    vectors, and the genre's share of that mean's `k` nearest other films, in the item space (the
    towers') and in the content space (the text encoder's content vectors), beside the genre's
    share of the catalog. Read from the state; no model runs."""
    block = store.catalog_since(0)
    row = {i: j for j, i in enumerate(block.item_ids)}
    spaces = {"item": block.vectors, "content": block.contents}
    out = {}
    for g in _genres(w):
        films = sorted((i for i in block.item_ids if g in w.meta.get(i, {}).get("genres", ())), key=lambda i: (-w.count[i], i))
        seed_rows = [row[i] for i in films[:seeds]]
        r = {"catalog": len(films) / len(block.item_ids)}
        for name, m in spaces.items():
            if m.shape[1] == 0:
                continue
            sims = m @ m[seed_rows].mean(0)
            sims[seed_rows] = -np.inf
            near = [block.item_ids[j] for j in np.argsort(-sims)[:k]]
            r[name] = genre_share(near, w.meta, g)
        out[g] = r
    names = {n for r in out.values() for n in r}
    return {"genres": out, "mean": {n: float(np.mean([r[n] for r in out.values() if n in r])) for n in sorted(names)},
            "seeds": seeds, "k": k}


def genre_share(items: Sequence[str], meta: dict, genre: str) -> float:
    """Share of the listed items that have `genre` (a multi-genre film counts for each)."""
    return sum(genre in meta.get(i, {}).get("genres", ()) for i in items) / max(1, len(items))


def _genres(w: World) -> list[str]:
    size = Counter(g for m in w.meta.values() for g in m["genres"])
    return sorted(g for g, n in size.items() if n >= MIN_GENRE_ITEMS)


def popular_unseen(w: World, genre: str, seen: set[str], rng: np.random.Generator, n: int) -> list[str]:
    """n films of `genre` the user has not seen, drawn from the POOL most popular such films."""
    cand = sorted((i for i in w.ids if genre in w.meta[i]["genres"] and i not in seen), key=lambda i: (-w.count[i], i))[:POOL]
    return [cand[j] for j in rng.permutation(len(cand))[:n]] if len(cand) >= n else []


@dataclass(frozen=True)
class Plan:
    user: str  # the real user cloned
    genre: str
    films: list[str]  # the films acted on, in order


def plan_genre(w: World, n_users: int, seed: int, liked: bool) -> list[Plan]:
    """Users and their genre: one under 3% of the history (shift) or one they like (negative)."""
    rng = np.random.default_rng(seed)
    genres = _genres(w)
    catalog = {g: sum(g in m["genres"] for m in w.meta.values()) / max(1, len(w.meta)) for g in genres}
    n_films = max(NEG_NS) if liked else max(SHIFT_NS)
    plan = []
    for u in rng.permutation(sorted(w.history)).tolist():
        hist = [e.item_id for e in w.history[u]]
        if len(hist) < MIN_HISTORY:
            continue
        share = {g: genre_share(hist, w.meta, g) for g in genres}
        ok = [g for g in genres if ((share[g] >= 0.10 and share[g] >= 1.5 * catalog[g]) if liked else share[g] < 0.03)]
        if not ok:
            continue
        g = ok[rng.integers(len(ok))]
        films = popular_unseen(w, g, set(hist), rng, n_films)
        if films:
            plan.append(Plan(u, g, films))
        if len(plan) == n_users:
            break
    return plan


def plan_twins(w: World, n_items: int, seed: int) -> dict[str, list[str]]:
    """Items among the held-out test items -> the users whose test event it is."""
    rng = np.random.default_rng(seed)
    users_of: dict[str, list[str]] = defaultdict(list)
    for u, i in sorted(w.held_out.items()):
        users_of[i].append(u)
    items = sorted(users_of)
    return {items[j]: users_of[items[j]] for j in sorted(rng.permutation(len(items))[:n_items].tolist())}


def clone_events(w: World, user: str, tag: str) -> tuple[str, list[Event]]:
    """The user's stored events under the clone id `<user>~<tag>`."""
    clone = f"{user}~{tag}"
    return clone, [Event(clone, e.item_id, e.event_type, e.timestamp, e.value, f"{clone}:{n}") for n, e in enumerate(w.history[user])]


def last_time(w: World, user: str) -> float:
    return max(e.timestamp for e in w.history[user])


# -- targets ---------------------------------------------------------------------------------
class Target(Protocol):
    name: str

    def recommend(self, user: str, k: int, query: str | None = None, exclude: Sequence[str] = ()) -> list[str]: ...

    def ingest(self, events: list[Event]) -> None: ...

    def upsert(self, items: list[tuple[str, str, dict]]) -> None: ...

    def close(self) -> None: ...


class ServedTarget:
    """freshrec through the served gRPC API."""

    name = "freshrec"

    def __init__(self, url: str) -> None:
        from freshrec.client.grpc_client import FreshrecClient

        self.client = FreshrecClient(url, timeout_s=60.0)
        self.calls = 0

    def recommend(self, user: str, k: int, query: str | None = None, exclude: Sequence[str] = ()) -> list[str]:
        self.calls += 1
        return self.client.recommend(user, k, query=query, exclude=list(exclude) or None).item_ids

    def ingest(self, events: list[Event]) -> None:
        from freshrec.client.grpc_client import EventIn

        self.client.ingest([EventIn(e.user_id, e.item_id, e.event_type, e.timestamp, None if math.isnan(e.value) else e.value, e.event_id)
                            for e in events])  # fmt: skip

    def upsert(self, items: list[tuple[str, str, dict]]) -> None:
        from freshrec.client.grpc_client import ItemIn

        for a in range(0, len(items), 32):
            self.client.upsert_items([ItemIn(i, text, meta) for i, text, meta in items[a : a + 32]])

    def close(self) -> None:
        self.client.close()


@dataclass
class BaselineStats:
    """What the context rows learn from the state before any scenario writes to it."""

    ids: list[str]
    pop: np.ndarray  # (I,) events per item over the latest POP_WINDOW events
    sim: np.ndarray  # (I, I) item-item cosine of co-occurrence, zero diagonal


def baseline_stats(w: World) -> BaselineStats:
    row = {i: r for r, i in enumerate(w.ids)}
    users = sorted(w.history)
    m = np.zeros((len(users), len(w.ids)), np.float32)  # (U, I) binary: the user touched the item
    for a, u in enumerate(users):
        rows = [row[e.item_id] for e in w.history[u] if e.item_id in row]
        m[a, rows] = 1.0
    g = m.T @ m  # (I, I) co-occurrence counts
    norm = np.sqrt(np.diag(g)).clip(min=1e-9)
    sim = g / norm[:, None] / norm[None, :]
    np.fill_diagonal(sim, 0.0)
    pop = np.asarray([w.recent[i] for i in w.ids], np.float64)
    return BaselineStats(list(w.ids), pop, sim.astype(np.float32))


def event_weight(event_type: str, value: float) -> float:
    if event_type == "rate" and not math.isnan(value):
        return (value - 3.0) / 2.0
    return {"dislike": -1.0, "skip": -0.5}.get(event_type, 1.0)


class BaselineTarget:
    """Popularity or the kNN over the last KNN_LAST events, over its own store copy (histories and
    seen items come from the store; the learned counts and similarities are frozen)."""

    def __init__(self, name: str, store, stats: BaselineStats) -> None:
        self.name, self.store = name, store
        self.ids = list(stats.ids)
        self.row = {i: r for r, i in enumerate(self.ids)}
        self.pop, self.sim = stats.pop.copy(), stats.sim
        self.calls = 0

    def recommend(self, user: str, k: int, query: str | None = None, exclude: Sequence[str] = ()) -> list[str]:
        self.calls += 1  # `query` is ignored: neither baseline reads text
        h = self.store.user_history(user, KNN_LAST)
        score = self.pop / max(self.pop.max(), 1.0) * 1e-3  # popularity breaks ties (the whole score for popularity)
        if self.name != "popularity":
            n0 = self.sim.shape[0]  # items upserted later have no co-occurrence
            for item, t, v in zip(h.item_ids, h.event_types, h.values):
                r = self.row.get(item)
                if r is not None and r < n0:
                    score[:n0] += event_weight(t, v) * self.sim[r]
        banned = [self.row[i] for i in (*h.seen, *exclude) if i in self.row]
        score[banned] = -np.inf
        top = np.argsort(-score, kind="stable")[:k]
        return [self.ids[r] for r in top if np.isfinite(score[r])]

    def ingest(self, events: list[Event]) -> None:
        self.store.add_events(events)

    def upsert(self, items: list[tuple[str, str, dict]]) -> None:
        new = [i for i, _, _ in items if i not in self.row]
        self.row.update({i: len(self.ids) + n for n, i in enumerate(new)})
        self.ids += new
        self.pop = np.concatenate([self.pop, np.zeros(len(new))])

    def close(self) -> None:
        self.store.close()


# -- scenarios -------------------------------------------------------------------------------
def run_shift(t: Target, w: World, plan: list[Plan]) -> dict:
    per_n: dict[int, dict[str, list]] = {n: {"top10": [], "top50": [], "ge3": []} for n in (0, *SHIFT_NS)}
    unchanged = []  # the top-50 after all N events is the N = 0 one: nothing the user did moved it
    for p in plan:
        clone, last, done, first = f"{p.user}~shift", last_time(w, p.user), 0, None
        for n in (0, *SHIFT_NS):
            if n > done:
                t.ingest([Event(clone, p.films[j], "rate", last + AFTER_S + 60 * j, 5.0, f"{clone}:shift:{j}") for j in range(done, n)])
                done = n
            top = t.recommend(clone, 50, exclude=p.films if n == 0 else ())
            first = top if first is None else first
            per_n[n]["top10"].append(genre_share(top[:10], w.meta, p.genre))
            per_n[n]["top50"].append(genre_share(top, w.meta, p.genre))
            per_n[n]["ge3"].append(sum(p.genre in w.meta.get(i, {}).get("genres", ()) for i in top[:10]) >= 3)
        unchanged.append(top == first)
    out = {str(n): {k: float(np.mean(v)) if v else math.nan for k, v in d.items()} for n, d in per_n.items()}
    return {"by_n": out, "users": len(plan), "unchanged": float(np.mean(unchanged)) if unchanged else math.nan}


def run_negative(t: Target, w: World, plan: list[Plan]) -> dict:
    out = {}
    for kind, value in NEG_KINDS:
        for n in NEG_NS:
            b10, b50, a10, a50 = [], [], [], []
            for p in plan:
                clone, last = f"{p.user}~neg-{kind}-{n}", last_time(w, p.user)
                before = t.recommend(clone, 50, exclude=p.films[:n])
                t.ingest([Event(clone, p.films[j], kind, last + AFTER_S + 60 * j, value, f"{clone}:neg:{j}") for j in range(n)])
                after = t.recommend(clone, 50)
                b10.append(genre_share(before[:10], w.meta, p.genre))
                b50.append(genre_share(before, w.meta, p.genre))
                a10.append(genre_share(after[:10], w.meta, p.genre))
                a50.append(genre_share(after, w.meta, p.genre))
            bm10, am10, bm50, am50 = (float(np.mean(x)) if x else math.nan for x in (b10, a10, b50, a50))
            out[f"{kind}x{n}"] = {"kind": kind, "events": n, "before10": bm10, "after10": am10, "before50": bm50, "after50": am50,
                                  "fall10": 1 - am10 / bm10 if bm10 else math.nan, "fall50": 1 - am50 / bm50 if bm50 else math.nan}  # fmt: skip
    return {"by_kind": out, "users": len(plan)}


def run_intent(t: Target, w: World, warm: list[str]) -> dict:
    own = {u: t.recommend(u, 10) for u in warm}
    rows = {}
    for kind, text, pred in INTENTS:
        cold = t.recommend("cold-visitor~intent", 10, query=text)
        wm, kept = [], []
        for u in warm:
            top = t.recommend(u, 10, query=text)
            wm.append(np.mean([pred(w.meta[i]) for i in top if i in w.meta]) if top else 0.0)
            kept.append(len(set(top) & set(own[u])))
        rows[text] = {"kind": kind, "cold": float(np.mean([pred(w.meta[i]) for i in cold if i in w.meta])) if cold else 0.0,
                      "warm": float(np.mean(wm)) if wm else math.nan, "kept": float(np.mean(kept)) if kept else math.nan,
                      "kept_ge3": float(np.mean(np.asarray(kept) >= 3)) if kept else math.nan,
                      "catalog": float(np.mean([pred(m) for m in w.meta.values()])), "cold_top3": [w.meta.get(i, {}).get("title", i) for i in cold[:3]]}  # fmt: skip
    keys = ("cold", "warm", "kept", "kept_ge3", "catalog")
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
    by_kind = {kd: {k: float(np.mean([r[k] for r in rows.values() if r["kind"] == kd])) for k in keys} for kd in dict.fromkeys(r["kind"] for r in rows.values())}
    return {"intents": rows, "mean": mean, "by_kind": by_kind, "warm_users": len(warm)}


def run_twins(t: Target, ds: Dataset, users_of: dict[str, list[str]], k: int) -> dict:
    at = ds.items.index()
    t.upsert([(f"twin:{i}", ds.items.text[at[i]], dict(ds.items.metadata[at[i]])) for i in users_of])
    r_orig, r_twin = [], []
    for i, users in users_of.items():
        for u in users:
            a = t.recommend(u, k, exclude=[f"twin:{i}"])
            b = t.recommend(u, k, exclude=[i])
            r_orig.append(a.index(i) + 1 if i in a else k + 1)
            r_twin.append(b.index(f"twin:{i}") + 1 if f"twin:{i}" in b else k + 1)
    o, tw = np.asarray(r_orig), np.asarray(r_twin)
    if not len(o):
        return {"items": len(users_of), "users": 0, "k": k}
    in50 = o <= 50
    return {"items": len(users_of), "users": int(len(o)), "k": k, "ranks_orig": o.tolist(), "ranks_twin": tw.tolist(),
            "median_orig": float(np.median(o)), "median_twin": float(np.median(tw)),
            "ratio_median": float(np.median(tw) / np.median(o)), "median_of_ratios": float(np.median(tw / o)),
            "orig_in50": int(in50.sum()), "twin_in50_given_orig": float((tw[in50] <= 50).mean()) if in50.any() else math.nan,
            "twin_in50": float((tw <= 50).mean()), "orig_in10": float((o <= 10).mean()), "twin_in10": float((tw <= 10).mean()),
            "twin_found": float((tw <= k).mean())}  # fmt: skip


# -- the part --------------------------------------------------------------------------------
def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def responsiveness(ds: Dataset, build_dir: Path, repository: Path, work: Path, opts: ResponsivenessOptions = ResponsivenessOptions(),
                   log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Every scenario against freshrec (served) and the context rows; see the module docstring."""
    from freshrec.config import DeployConfig
    from freshrec.server_ext.launcher import start_on_free_ports
    from freshrec.store import open_store
    from freshrec.store.sqlite import copy_sqlite

    t_all = time.time()
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = work / "resp_base.db"
    copy_sqlite(Path(build_dir) / "state.db", base)
    store = open_store(f"sqlite:///{base}")
    if opts.categories not in ("genres", "topics"):
        raise ValueError(f"unknown responsiveness categories {opts.categories!r}; expected genres or topics")
    if opts.categories == "topics":
        from freshrec.contract import TOPICS_FILE
        from freshrec.models.checkpoints import CHECKPOINTS
        from freshrec.models.topics import TopicModel

        path = Path(build_dir) / CHECKPOINTS / TOPICS_FILE
        if not path.exists():
            raise ValueError(f"responsiveness by topics needs the build's topic model, and {path} is not there (rebuild)")
        model = TopicModel.load(path)
        if model.empty:
            raise ValueError("responsiveness by topics: the build's topic model was fitted on texts without a word")
        block = store.catalog_since(0)
        w = load_world(ds, store, topic_categories(block.item_ids, block.topics, model))
    else:
        w = load_world(ds, store)
    if "intent" in opts.scenarios and opts.categories != "genres":
        raise ValueError("the intent scenario's predicates read MovieLens genres and years: run it with categories='genres'")
    geo = geometry(w, store)
    store.close()
    cat, cats, items = ("topic", "topics", "items") if opts.categories == "topics" else ("genre", "genres", "films")
    log(f"responsiveness: a {cat}'s share among the {geo['k']} nearest {items} of its {geo['seeds']} most stored ones (mean over "
        f"{len(geo['genres'])} {cats}): item space {geo['mean']['item']:.2f}, content space {geo['mean'].get('content', float('nan')):.2f}, "
        f"catalog {geo['mean']['catalog']:.2f}")  # fmt: skip
    stats = baseline_stats(w)
    k_max = DeployConfig().max_k
    plans = {
        "shift": plan_genre(w, opts.shift_users, opts.seed, liked=False),
        "negative": plan_genre(w, opts.negative_users, opts.seed + 1, liked=True),
    }
    rng = np.random.default_rng(opts.seed + 2)
    warm = [u for u in rng.permutation(sorted(w.history)).tolist() if len(w.history[u]) >= WARM_MIN_EVENTS][: opts.warm_users]
    twins = plan_twins(w, opts.twins, opts.seed + 3)
    log(f"responsiveness: {len(w.history)} users, {len(w.ids)} items in the state; shift {len(plans['shift'])} users, "
        f"negative {len(plans['negative'])}, "
        + (f"intent {len(INTENTS)} intents x ({len(warm)} warm + 1 cold), " if "intent" in opts.scenarios else "")
        + f"twins {len(twins)} items "
        f"for {sum(map(len, twins.values()))} users (k = {k_max})")  # fmt: skip

    unknown = set(opts.scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown responsiveness scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    groups = [(sc,) for sc in opts.scenarios] if opts.separate_states else [
        g for g in (tuple(sc for sc in grp if sc in opts.scenarios) for grp in GROUPS) if g]
    models: dict[str, dict] = {"freshrec": {}, "popularity": {}, "knn": {}}
    seconds = {}
    for group in groups:
        tag = "_".join(group)
        state = work / f"resp_{tag}.db"
        copy_sqlite(base, state)
        clones = [("shift", p.user) for p in plans["shift"]] if "shift" in group else []
        if "negative" in group:
            clones += [(f"neg-{kind}-{n}", p.user) for kind, _ in NEG_KINDS for n in NEG_NS for p in plans["negative"]]
        if clones:
            s = open_store(f"sqlite:///{state}")
            events = [e for ctag, u in clones for e in clone_events(w, u, ctag)[1]]
            for a in range(0, len(events), 5000):
                s.add_events(events[a : a + 5000])
            s.close()
        copies = {}
        for name in ("popularity", "knn"):
            copies[name] = work / f"resp_{tag}_{name}.db"
            copy_sqlite(state, copies[name])
        t0 = time.time()
        server = start_on_free_ports(Path(repository), env={"FRESHREC_STATE": f"sqlite:///{state}"}, work_dir=work)
        log(f"responsiveness: tritonserver up on a private state copy for {', '.join(group)} ({len(clones)} clone users, {time.time() - t0:.0f}s)")
        targets: list = []
        try:
            targets = [ServedTarget(server.grpc_url)] + [BaselineTarget(n, open_store(f"sqlite:///{p}"), stats) for n, p in copies.items()]
            for scenario in group:
                t0 = time.time()
                for t in targets:
                    calls = t.calls
                    if scenario == "shift":
                        r = run_shift(t, w, plans["shift"])
                    elif scenario == "negative":
                        r = run_negative(t, w, plans["negative"])
                    elif scenario == "intent":
                        r = run_intent(t, w, warm)
                        r["query_used"] = t.name == "freshrec"
                    else:
                        r = run_twins(t, ds, twins, k_max)
                    r["calls"] = t.calls - calls
                    models[t.name][scenario] = r
                seconds[scenario] = round(time.time() - t0, 1)
                log(f"responsiveness {scenario} ({seconds[scenario]:.0f}s): " + "; ".join(f"{n}: {headline(scenario, m[scenario])}" for n, m in models.items()))
        finally:
            for t in targets:
                t.close()
            server.stop()
            for p in (state, *copies.values()):
                _remove(p)
    _remove(base)
    return {"seed": opts.seed, "options": {k: v for k, v in vars(opts).items()}, "build": str(build_dir), "models": models, "geometry": geo,
            "categories": opts.categories,
            "plans": {"shift_genres": dict(Counter(p.genre for p in plans["shift"])), "negative_genres": dict(Counter(p.genre for p in plans["negative"])),
                      "warm_users": len(warm), "twin_items": len(twins), "twin_users": sum(map(len, twins.values())), "intents": len(INTENTS)},
            "state": {"users": len(w.history), "items": len(w.ids), "events": int(sum(w.count.values()))},
            "seconds": {**seconds, "total": round(time.time() - t_all, 1)}}  # fmt: skip


def headline(scenario: str, r: dict) -> str:
    """One line of a scenario's result, for the log."""
    if scenario == "shift":
        b = r["by_n"]
        return f"top-10 share N0 {b['0']['top10']:.3f} N2 {b['2']['top10']:.3f} N8 {b['8']['top10']:.3f}, >=3 of 10 at N8 {b['8']['ge3']:.0%}"
    if scenario == "negative":
        return "fall of the top-10 share x8 " + ", ".join(f"{v['kind']} {v['fall10']:.0%}" for v in r["by_kind"].values() if v["events"] == max(NEG_NS))
    if scenario == "intent":
        m = r["mean"]
        return f"match cold {m['cold']:.2f} warm {m['warm']:.2f} (kept {m['kept']:.1f})"
    if scenario == "twins" and r.get("users"):
        return f"median rank twin {r['median_twin']:.0f} / original {r['median_orig']:.0f}, twin in top-50 given original {r['twin_in50_given_orig']:.0%}"
    return "no users"


def _target(name: str, measured: float, ok: Callable[[float], bool]) -> dict:
    return {"target": name, "measured": float(measured), "met": bool(not math.isnan(measured) and ok(measured))}


def targets(r: dict) -> list[dict]:
    """The issue's responsiveness targets beside freshrec's measured figures."""
    f = r["models"]["freshrec"]
    cat = "topic" if r.get("categories") == "topics" else "genre"
    out = []
    if "shift" in f:
        b = f["shift"]["by_n"]
        out += [_target(f"shift: the new {cat}'s top-10 share after 8 five-star events >= 0.40", b["8"]["top10"], lambda v: v >= 0.40),
                _target(f"shift: users with >= 3 of 10 in the new {cat} after 8 events >= 0.60", b["8"]["ge3"], lambda v: v >= 0.60),
                _target(f"shift: the new {cat}'s top-10 share after 2 events >= 0.15", b["2"]["top10"], lambda v: v >= 0.15)]  # fmt: skip
    if "negative" in f:
        weakest = min(v["fall10"] for v in f["negative"]["by_kind"].values() if v["events"] == max(NEG_NS))
        out.append(_target(f"negative: fall of a liked {cat}'s top-10 share after 8 events >= 0.50 (the weakest of 1-star, dislike, skip)",
                           weakest, lambda v: v >= 0.50))  # fmt: skip
    if "intent" in f:
        m = f["intent"]["mean"]
        out += [_target("intent: cold user's top-10 match share >= 0.70", m["cold"], lambda v: v >= 0.70),
                _target("intent: warm users' top-10 match share >= 0.50", m["warm"], lambda v: v >= 0.50),
                _target("intent: warm users keep >= 3 of their own top-10 (mean)", m["kept"], lambda v: v >= 3.0)]  # fmt: skip
    if "twins" in f and f["twins"].get("users"):
        t = f["twins"]
        out += [_target("twins: median rank of the twin <= 1.5 x the original's", t["ratio_median"], lambda v: v <= 1.5),
                _target("twins: twin in the top-50 for >= 0.80 of the users whose original is there", t["twin_in50_given_orig"], lambda v: v >= 0.80)]  # fmt: skip
    return out

"""The recommendation pipeline, independent of Triton.

    state store -> history tensors -> user tower -> retrieval over the item index
                -> reranker -> filter -> top-k

Model calls go through an `Engine`: in the server it issues BLS requests to the exported models
(`server_ext/bls.py`) or runs their ONNX files in its own process (`OnnxEngine`); in the
reference (`TorchEngine`) it runs the PyTorch modules. Everything else is shared, so the
served result can be checked against the reference for the same state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np

from freshrec.arrays import arrays_for
from freshrec.config import CONTENT_EVENT_WEIGHTS, DeployConfig, ModelConfig
from freshrec.contract import DEFAULT_K, MAX_BATCH_ITEMS, MAX_FUTURE_S, MAX_ID_BYTES, MAX_TEXT_BYTES
from freshrec.index import ItemIndex, ItemRows
from freshrec.models.features import HISTORY_CONTEXT, event_type_index, gather_vectors, history_arrays
from freshrec.models.tokenizer import Tokenizer
from freshrec.models.topics import TopicModel, document, explain, interest_profile
from freshrec.store.base import Event, Item, StateStore, UserHistory

# The "now" of popularity: the latest events over everyone (ML-100K: about 25 days of them), read
# by the cold-start fallback and the trend prior (ContentConfig.trend_prior, popularity_prior).
POPULAR_WINDOW = 10_000
QUERY_PRIOR_ITEMS = 101  # the items a first-time visitor's query prior counts (ContentConfig.popularity_prior)


class RecentCounts(NamedTuple):
    """Every item of the latest POPULAR_WINDOW events with its count there, read once per
    `Recommender.popular_ttl_s`: the cold-start fallback reads `ranked`, the trend prior
    `counts`, a first-time visitor's query prior `head` (its QUERY_PRIOR_ITEMS most taken, as
    it was tuned: counting every item lowers the cold intent match on ML-100K from 0.773 to 0.758)."""

    read_at: float
    ranked: list[tuple[str, float]]  # most frequent first
    counts: dict[str, float]
    head: dict[str, float]


class InvalidInput(ValueError):
    """A request the service refuses (maps to INVALID_ARGUMENT / HTTP 400)."""


class Unsupported(Exception):
    """A request this deployment cannot answer (maps to UNSUPPORTED / gRPC UNIMPLEMENTED)."""


class Cancelled(Exception):
    """The client gave up on the request (its deadline passed or it cancelled the call): the
    pipeline stops computing it (maps to CANCELLED). `stage` is the last stage it finished
    ("start" when nothing ran)."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"the client gave up on this request; dropped after stage {stage!r}")
        self.stage = stage


def _never() -> bool:
    return False


class Stats:
    """Where the pipeline reports what it does; the server plugs in Prometheus metrics
    (`server_ext/metrics.py`), everything else keeps this silent default."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times one pipeline stage (store, user_tower, retrieval, rerank, embed, explain, topics)."""
        yield

    def index_size(self, n: int) -> None: ...

    def index_recall(self, recall: float) -> None:
        """The retrieval index's self-checked recall@200 (ItemIndex.self_check), after each build."""

    def fallback(self, kind: str) -> None:
        """A recommendation not from the personal path: "popular" (cold start) or "query"."""

    def cancelled(self, stage: str) -> None:
        """A request dropped because its client gave up, after `stage` ("start": before any)."""


class Engine(Protocol):
    def run(self, model: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Runs one exported model on batched inputs named as in the contract. Takes numpy
        arrays or torch tensors; returns either (the pipeline converts with `xp.asarray`)."""


@dataclass
class Recommendation:
    item_ids: list[str]
    scores: np.ndarray  # (k,) float32, best first
    source: str  # "personal", "query" or "popular" (cold start)
    explanation: dict[str, Any] | None = None  # when asked for (recommend(explain=True)): freshrec.models.topics.explain


def content_weight(event_type: str, value: float, weights: dict[str, float] = CONTENT_EVENT_WEIGHTS) -> float:
    """How much one event says "more like this" (+) or "not this" (-) to the short-term content
    channel: a rating maps 1..5 stars to -1..+1, other types by `weights` (the build's
    `EventTypeConfig.content_weights`; CONTENT_EVENT_WEIGHTS by default)."""
    if event_type == "rate":
        return 1.0 if math.isnan(value) else max(-1.0, min(1.0, (float(value) - 3.0) / 2.0))  # scalars: no numpy call
    return weights.get(event_type, 0.0)


def check_id(kind: str, value: str) -> str:
    if not value:
        raise InvalidInput(f"{kind} must not be empty")
    if len(value.encode()) > MAX_ID_BYTES:
        raise InvalidInput(f"{kind} is longer than {MAX_ID_BYTES} bytes")
    if "\x00" in value:
        raise InvalidInput(f"{kind} must not contain NUL bytes")
    return value


def check_text(kind: str, value: str) -> str:
    if len(value.encode()) > MAX_TEXT_BYTES:
        raise InvalidInput(f"{kind} is longer than {MAX_TEXT_BYTES} bytes")
    if "\x00" in value:
        raise InvalidInput(f"{kind} must not contain NUL bytes")
    return value


class Recommender:
    """Serves recommend / ingest / upsert over one store, one item index and one engine.

    Arrays live where `device` says (`freshrec.arrays`): numpy on the CPU, torch tensors
    on a GPU; engine results are brought there with `xp.asarray` (a no-op when they already are).
    """

    def __init__(
        self,
        store: StateStore,
        engine: Engine,
        tokenizer: Tokenizer,
        cfg: ModelConfig,
        deploy: DeployConfig,
        device: Any = "cpu",
        popular_ttl_s: float = 10.0,
        stats: Stats | None = None,
        index_cache: Path | None = None,
        topics: TopicModel | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.deploy = deploy
        self.xp = arrays_for(device)
        # One id <-> row map for the three indexes below: they apply the same `catalog_since`
        # blocks, so they hold the same items in the same rows.
        rows = ItemRows()
        self.index = ItemIndex(cfg.item.dim, device, kind=deploy.index, index_cache=index_cache, rows=rows)
        # The content vectors of the same items in the same rows: the short-term and query
        # channels search and score here.
        self.content = ItemIndex(cfg.text.content_dim, device, kind=deploy.index, index_cache=index_cache, rows=rows)
        # The build's topic model and each item's mixture in the same rows again (host memory,
        # never searched): read only by explanations, kept current with the other two.
        self.topic_model = topics
        self.topics = ItemIndex(topics.n_topics, "cpu", kind="exact", index_cache=index_cache, rows=rows) if topics is not None else None
        self.stats = stats or Stats()
        # The item vectors this pipeline reads and writes: those of its own model version (the
        # store keeps one vector space per version, so two versions loaded side by side during
        # a rollout never mix vectors).
        self.space = deploy.version
        self.unservable: set[int] = set()  # index rows without a vector of this space (fill_missing)
        self.popular_ttl_s = popular_ttl_s
        self._popular = RecentCounts(-math.inf, [], {}, {})

    def refresh_index(self) -> None:
        """Applies catalog writes since the last refresh to both indexes and reports the size, and
        the item index's recall whenever its approximate structure was (re)built (ItemIndex.self_check)."""
        block = self.store.catalog_since(self.index.version, space=self.space)
        if block.item_ids:
            contents = block.contents
            if contents.shape[1] != self.content.dim:  # items stored without content vectors
                contents = np.zeros((len(block.item_ids), self.content.dim), np.float32)
            vectors = block.vectors
            missing = np.flatnonzero(block.missing)
            if len(missing) and vectors.shape[1] != self.index.dim:
                vectors = np.zeros((len(block.item_ids), self.index.dim), np.float32)
            self.index.apply_vectors(block.item_ids, vectors)
            self.content.apply_vectors(block.item_ids, contents)
            if self.topics is not None:
                mixtures = block.topics
                if mixtures.shape[1] != self.topics.dim:  # items stored without a mixture share no topic
                    mixtures = np.zeros((len(block.item_ids), self.topics.dim), np.float32)
                self.topics.apply_vectors(block.item_ids, mixtures)
            if self.unservable:
                self.unservable -= {self.index.rows[block.item_ids[j]] for j in np.flatnonzero(~block.missing).tolist()}
            if len(missing):
                self.fill_missing([block.item_ids[j] for j in missing.tolist()], contents[missing])
        self.index.version = self.content.version = block.version
        if self.topics is not None:
            self.topics.version = block.version
        if block.item_ids:
            self.stats.index_size(len(self.index))
            if self.index.recall is None:  # first load, or the graph / int8 scan was rebuilt
                self.stats.index_recall(self.index.self_check())

    def fill_missing(self, item_ids: list[str], contents: np.ndarray, batch: int = 64) -> int:
        """Computes this version's vectors of items the store holds none for (written by another
        version's `upsert_items` during a rollout, or a whole new space) from their stored text
        embeddings and id rows, the way `upsert` makes them, and applies them to the index.
        Items stored without a text embedding cannot be computed: they keep a zero row and are
        never recommended (`unservable`) until a version's vectors for them are stored. Returns
        how many were computed."""
        xp = self.xp
        id_rows, embeddings = self.store.item_inputs(item_ids)
        has = np.abs(embeddings).sum(1) > 0 if embeddings.size else np.zeros(len(item_ids), bool)
        self.unservable.update(self.index.rows[i] for i, ok in zip(item_ids, has.tolist()) if not ok)
        keep = np.flatnonzero(has)
        if not len(keep):
            return 0
        ids = [item_ids[j] for j in keep.tolist()]
        rows = self.known_rows(id_rows[keep])
        parts = []
        for s in range(0, len(ids), batch):  # the towers' max_batch_size
            parts.append(xp.numpy(self.engine.run("item_tower", {
                "text_embedding": xp.asarray(np.ascontiguousarray(embeddings[keep[s : s + batch]], np.float32)),
                "id_index": xp.asarray(rows[s : s + batch, None])})["item_vector"]))  # fmt: skip
        vectors = np.concatenate(parts).astype(np.float32)
        self.index.apply_vectors(ids, vectors)  # the neighbours of the new items below are in the index now
        new = rows == 0
        if new.any():
            mixed = self._new_item_vectors(xp.asarray(vectors), xp.asarray(contents[keep]), new, set(ids))
            self.index.apply_vectors(ids, xp.numpy(mixed).astype(np.float32))
        return len(ids)

    def known_rows(self, id_rows) -> np.ndarray:
        """Learned id rows as this version knows them: rows given by a later version (the id
        tables grow at each `freshrec update`) are beyond this item tower's table, so 0 (text only)."""
        rows = np.asarray(id_rows, np.int64)
        return np.where(rows <= self.cfg.item.id_vocab, rows, 0)

    # -- recommend --------------------------------------------------------------------------
    def recommend(
        self,
        user_id: str,
        k: int = DEFAULT_K,
        query: str | None = None,
        exclude: Sequence[str] = (),
        cancelled: Callable[[], bool] = _never,
        explain: bool = False,
    ) -> Recommendation:
        """`cancelled` is asked between the stages (in the server: has the client given up? The
        server asks once more before it starts); once it says True the request is dropped with
        `Cancelled`, so an expired request costs at most the stage it was in. `explain` adds the
        topic explanation (`Recommendation.explanation`); without it nothing of it is computed."""
        if explain and self.topic_model is None:
            raise Unsupported("this build has no topic model (built before topics): rebuild it to get explanations")
        rec, history = self._recommend(user_id, k, query, exclude, cancelled)
        if explain:
            with self.stats.stage("explain"):
                rec.explanation = self.explain(history, rec.item_ids)
        return rec

    def _recommend(self, user_id: str, k: int, query: str | None, exclude: Sequence[str],
                   cancelled: Callable[[], bool]) -> tuple[Recommendation, UserHistory]:  # fmt: skip

        def checkpoint(stage: str) -> None:
            if cancelled():
                self.stats.cancelled(stage)
                raise Cancelled(stage)

        check_id("user_id", user_id)
        if not 1 <= k <= self.deploy.max_k:
            raise InvalidInput(f"k must be in [1, {self.deploy.max_k}], got {k}")
        if query is not None:
            check_text("query", query)
        if len(exclude) > MAX_BATCH_ITEMS:
            raise InvalidInput(f"exclude_item_ids has {len(exclude)} ids; at most {MAX_BATCH_ITEMS}")
        for item_id in exclude:
            check_id("exclude_item_ids entry", item_id)
        xp, stats = self.xp, self.stats
        with stats.stage("store"):
            self.refresh_index()
            history = self.store.user_history(user_id, self.cfg.user.max_history + HISTORY_CONTEXT)
        checkpoint("store")
        banned = sorted({self.index.rows[i] for i in (*history.seen, *exclude) if i in self.index.rows} | self.unservable)

        hist = self.history_tensors(history)
        user_vec = None
        if hist is not None:
            with stats.stage("user_tower"):
                user_vec = xp.asarray(self.engine.run("user_tower", hist)["user_vector"])[0]
            checkpoint("user_tower")
        cc = self.cfg.content
        query_vec = query_content = None
        if query:  # matched in content (the query channel), else blended into the user vector
            with stats.stage("embed"):
                if cc.beta_query:
                    query_content = xp.asarray(self._encode([query])["content_vector"])[0]
                else:
                    query_vec = self.embed_items([query], [0])[0]
        if user_vec is None and not query:
            stats.fallback("popular")
            return self._popular_for(k, set(history.seen) | set(exclude)), history
        if user_vec is None:
            stats.fallback("query")
            if query_content is not None:  # a first visit with a typed intent: the language model's geometry decides
                return self._query_only(query_content, k, banned), history
            u, source = query_vec, "query"
        elif query_vec is None:
            u, source = user_vec, "personal"
        else:
            u, source = xp.normalize(user_vec + self.deploy.query_weight * query_vec), "personal"

        short = self._short_profile(history) if hist is not None else None
        n_candidates = max(k, self.cfg.reranker.num_candidates)
        n_short = min(cc.short_candidates, n_candidates // 2) if short is not None else 0
        with stats.stage("retrieval"):
            rows, retrieval_scores = self.index.search(u, max(k, n_candidates - n_short), banned)
            extra = []
            if n_short:
                extra.append(self.content.search(short, n_short, banned)[0])
            if query_content is not None and cc.beta_query and cc.query_candidates:
                extra.append(self.content.search(query_content, cc.query_candidates, banned)[0])
            if extra:
                rows = self._merge(rows, extra, max(n_candidates, self.deploy.max_k))
                retrieval_scores = self.index.matrix[rows] @ u
        if len(rows) == 0:
            return Recommendation([], np.zeros(0, np.float32), source), history
        if hist is None:  # no events to rerank against: retrieval order is the answer
            scores = retrieval_scores
        else:
            checkpoint("retrieval")
            with stats.stage("rerank"):
                scores = self._rerank(hist, rows, retrieval_scores)
                if short is not None:
                    scores = scores + cc.beta_short * (self.content.matrix[rows] @ short)
                if cc.trend_prior:
                    scores = scores + cc.trend_prior * self._trend(rows, self._recent().counts)
        keep = None
        if query_content is not None and cc.beta_query and hist is not None:
            scores, keep = self._blend_query(scores, self.content.matrix[rows] @ query_content)
        top, values = xp.topk(scores, min(k, len(rows)))
        if keep is not None:  # the user's own picks kept in the list, in the blend's order
            top = self._with_kept(scores, top, keep, min(k, len(rows)))
            values = scores[top]
        chosen = xp.numpy(rows[top]).tolist()
        return Recommendation([self.index.item_ids[r] for r in chosen], xp.numpy(values).astype(np.float32), source), history

    # -- interest topics (ModelConfig.topics) -------------------------------------------------
    def interest_events(self, history: UserHistory) -> tuple[list[str], np.ndarray]:
        """The events a user's interest profile is made of: the window the user tower reads (the
        newest `max_history` events whose items are known), and each one's signed weight:
        `profile_decay`^age x what the event says (`content_weight`: a 5-star rating or a
        purchase +1, a 3-star rating 0, a dislike or a 1-star rating -1)."""
        known = [j for j, item in enumerate(history.item_ids) if item in self.topics.rows][-self.cfg.user.max_history :]
        n, decay = len(known), self.cfg.topics.profile_decay
        table = self.cfg.events.content_weights
        weights = np.array([content_weight(history.event_types[j], history.values[j], table) * decay ** (n - 1 - a)
                            for a, j in enumerate(known)], np.float64)  # fmt: skip
        return [history.item_ids[j] for j in known], weights

    def interest_profile(self, history: UserHistory) -> np.ndarray | None:
        """(K,) the user's interest profile (freshrec.models.topics.interest_profile); None without one."""
        ids, weights = self.interest_events(history)
        return interest_profile(self.topics.matrix[[self.topics.rows[i] for i in ids]], weights) if ids else None

    def explain(self, history: UserHistory, item_ids: Sequence[str]) -> dict[str, Any]:
        """The explanation of a recommended list for the user whose history it was made from."""
        ids, weights = self.interest_events(history)
        mix = self.topics.matrix
        history_mix = mix[[self.topics.rows[i] for i in ids]] if ids else np.zeros((0, self.topics.dim), np.float32)
        profile = interest_profile(history_mix, weights) if ids else None
        zero = np.zeros(self.topics.dim, np.float32)  # an item the index does not hold (yet) shares no topic
        items_mix = np.array([mix[self.topics.rows[i]] if i in self.topics.rows else zero for i in item_ids], np.float32).reshape(-1, self.topics.dim)
        return explain(self.topic_model, profile, list(item_ids), items_mix, ids, history_mix, weights, self.store.item_texts,
                       self.cfg.topics)  # fmt: skip

    # -- content channels (ModelConfig.content) ---------------------------------------------
    def _short_profile(self, history: UserHistory):
        """The user's short-term content profile s (ContentConfig): the signed, decayed mean of the
        content vectors of the latest events; None when the channel is off or nothing counts."""
        cc = self.cfg.content
        if not cc.beta_short or not cc.short_events:
            return None
        rows, coef, table = [], [], self.cfg.events.content_weights
        n = len(history.item_ids)
        for j in range(n - 1, max(-1, n - 1 - cc.short_events), -1):  # newest first
            row = self.content.rows.get(history.item_ids[j])
            if row is None:
                continue
            kind, value = history.event_types[j], history.values[j]
            said = content_weight(kind, value, table)
            w = said * cc.short_decay ** (n - 1 - j)
            # An explicit "no" (a type weighted below 0: dislike, skip by default) is scaled up; so is a 1-star rating.
            scale = cc.one_star_scale if kind == "rate" and value <= 1.0 else cc.negative_scale if kind != "rate" and said < 0 else 1.0
            rows.append(row)
            coef.append((w, scale))
        norm = sum(abs(w) for w, _ in coef)
        if norm == 0:
            return None
        weights = self.xp.asarray(np.array([w * scale / norm for w, scale in coef], np.float32))
        return weights @ self.content.matrix[self.xp.asarray(np.array(rows, np.int64))]

    def _merge(self, rows, extra: list, limit: int):
        """The user tower's candidates, then each extra source's that are new, at most `limit`."""
        xp = self.xp
        merged = np.concatenate([xp.numpy(rows), *(xp.numpy(r) for r in extra)])
        _, first = np.unique(merged, return_index=True)
        return xp.asarray(merged[np.sort(first)][:limit])

    def _blend_query(self, personal, query_scores):
        """z(personal) + beta_query z(query similarity) over the candidates, and the rows (of the
        candidates) of the `query_keep` best-blended items of the user's own top-10."""
        cc, xp = self.cfg.content, self.xp

        def z(x):
            return (x - x.mean()) / max(float(x.std()), 1e-6)

        blended = z(personal) + cc.beta_query * z(query_scores)
        if not cc.query_keep:
            return blended, None
        own, _ = xp.topk(personal, min(10, len(personal)))
        best, _ = xp.topk(blended[own], min(cc.query_keep, len(own)))
        return blended, own[best]

    def _with_kept(self, scores, top, keep, k: int):
        """`top` with the kept candidates forced in (replacing the weakest), ordered by score."""
        xp = self.xp
        top_np, keep_np = xp.numpy(top), xp.numpy(keep)
        missing = keep_np[~np.isin(keep_np, top_np)]
        if len(missing) == 0:
            return top
        rest = top_np[~np.isin(top_np, keep_np)][: k - len(keep_np)]
        chosen = np.concatenate([rest, keep_np])
        order = np.argsort(-xp.numpy(scores[xp.asarray(chosen)]), kind="stable")
        return xp.asarray(chosen[order])

    def _query_only(self, query_content, k: int, banned: list[int]) -> Recommendation:
        """A cold user's typed intent: the items nearest the query in content, with a small prior
        for what is watched now (log of the recent count)."""
        cc, xp = self.cfg.content, self.xp
        with self.stats.stage("retrieval"):
            rows, sims = self.content.search(query_content, max(k, cc.query_candidates), banned)
        scores = sims + cc.popularity_prior * self._trend(rows, self._recent().head)
        top, values = xp.topk(scores, min(k, len(rows)))
        chosen = xp.numpy(rows[top]).tolist()
        return Recommendation([self.index.item_ids[r] for r in chosen], xp.numpy(values).astype(np.float32), "query")

    def history_tensors(self, history: UserHistory) -> dict[str, Any] | None:
        """The user's events whose items are in the index -> the batched history tensors
        (1, L, ...) by the shared recipe (freshrec.models.features); None without such events."""
        known = [j for j, item in enumerate(history.item_ids) if item in self.index.rows]
        if not known:
            return None
        xp = self.xp
        arrays = history_arrays(
            timestamps=np.array([history.timestamps[j] for j in known]),
            values=np.array([history.values[j] for j in known], np.float32),
            types=np.array([event_type_index(history.event_types[j]) for j in known], np.int64),
            rows=np.array([self.index.rows[history.item_ids[j]] for j in known], np.int64),
            max_history=self.cfg.user.max_history,
        )
        rows = arrays.pop("rows")
        out = {name: xp.asarray(a) for name, a in arrays.items()}
        out["history_vectors"] = gather_vectors(self.index.matrix, xp.asarray(rows), out["history_mask"])  # (1, L, D)
        return out

    def _rerank(self, hist: dict[str, Any], rows, retrieval_scores):
        # Padded to a fixed C so concurrent requests batch together in the reranker.
        xp, n = self.xp, len(rows)
        C = max(self.cfg.reranker.num_candidates, n)
        cand = xp.zeros((1, C, self.cfg.item.dim), np.float32)
        cand[0, :n] = self.index.matrix[rows]
        mask = xp.zeros((1, C), np.bool_)
        mask[0, :n] = True
        cand_scores = xp.zeros((1, C), np.float32)
        cand_scores[0, :n] = retrieval_scores
        inputs = dict(hist, candidate_vectors=cand, candidate_mask=mask, candidate_scores=cand_scores)
        return xp.asarray(self.engine.run("reranker", inputs)["scores"])[0, :n]

    def _recent(self) -> RecentCounts:
        """The popularity counts, read from the store again after `popular_ttl_s`."""
        now = time.monotonic()
        if now - self._popular.read_at > self.popular_ttl_s:
            ranked = self.store.popular_items(POPULAR_WINDOW, window=POPULAR_WINDOW)
            self._popular = RecentCounts(now, ranked, dict(ranked), dict(ranked[:QUERY_PRIOR_ITEMS]))
        return self._popular

    def _trend(self, rows, counts: dict[str, float]):
        """log(1 + count) of each candidate row by `counts` (a RecentCounts field): what is
        taken now, whatever a model learned at its last update."""
        ids = self.index.item_ids
        return self.xp.asarray(np.log1p(np.array([counts.get(ids[r], 0.0) for r in self.xp.numpy(rows).tolist()], np.float32)))

    def _popular_for(self, k: int, banned: set[str]) -> Recommendation:
        chosen = [(i, s) for i, s in self._recent().ranked if i not in banned][:k]
        if len(chosen) < k:  # too few recent events: fill from the catalog in index order
            have = {i for i, _ in chosen} | banned  # the index was refreshed by this request
            chosen += [(i, 0.0) for i in self.index.item_ids if i not in have][: k - len(chosen)]
        return Recommendation([i for i, _ in chosen], np.array([s for _, s in chosen], np.float32), "popular")

    # -- ingest -----------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> int:
        """Checks every event, then stores them all under their built-in type names (the build's
        EventTypeConfig maps the names its data used); one bad event refuses the request."""
        now = time.time()
        names = self.cfg.events
        checked = []
        for e in events:
            check_id("user_id", e.user_id)
            check_id("item_id", e.item_id)
            try:
                kind = names.canonical(e.event_type)
            except ValueError as err:
                raise InvalidInput(str(err)) from None
            if not (math.isfinite(e.timestamp) and 0 <= e.timestamp <= now + MAX_FUTURE_S):
                raise InvalidInput(f"timestamp must be unix seconds between 1970 and now + 1 day, got {e.timestamp!r}")
            if math.isinf(e.value):
                raise InvalidInput("value must be finite (or NaN for none)")
            if e.event_id is not None:
                check_id("event_id", e.event_id)
            checked.append(e if kind == e.event_type else dataclasses.replace(e, event_type=kind))
        with self.stats.stage("store"):
            return self.store.add_events(checked)

    # -- forget -----------------------------------------------------------------------------
    def forget(self, user_id: str) -> int:
        """Removes every stored event of a user (durably, before it returns); the next recommend
        for them is a new user's. The pipeline keeps nothing per user (histories and seen items
        are read from the store on every request); the popularity list it caches for
        `popular_ttl_s` is a count per item over everyone's latest events, read again after that.
        Returns how many events were removed (0: none left, e.g. forgotten before)."""
        check_id("user_id", user_id)
        with self.stats.stage("store"):
            return self.store.forget_user(user_id)

    # -- items ------------------------------------------------------------------------------
    def embed_items(self, texts: Sequence[str], id_indices: Sequence[int]):
        """Texts -> (N, D) item vectors through the text encoder and the item tower."""
        return self._embed(texts, id_indices)[0]

    def _encode(self, texts: Sequence[str]) -> dict[str, Any]:
        """Texts -> the text encoder's outputs (text_embedding, content_vector)."""
        ids, mask = self.tokenizer(list(texts))
        return self.engine.run("text_encoder", {"input_ids": self.xp.asarray(ids), "attention_mask": self.xp.asarray(mask)})

    def _embed(self, texts: Sequence[str], id_indices: Sequence[int]):
        """Texts -> (N, D) item vectors, (N, Ec) content vectors and the (N, E) text embeddings
        they came from (stored with the items), one text encoder run."""
        xp = self.xp
        out = self._encode(texts)
        id_index = xp.asarray(self.known_rows(id_indices)[:, None])
        vectors = xp.asarray(self.engine.run("item_tower", {"text_embedding": xp.asarray(out["text_embedding"]), "id_index": id_index})["item_vector"])
        return vectors, xp.asarray(out["content_vector"]), out["text_embedding"]

    def _new_item_vectors(self, vectors, contents, new: np.ndarray, exclude: set[str]):
        """A new item's (no learned id row) collaborative vector: `new_item_mix` of the
        similarity-weighted mean of its content-nearest catalog items' vectors (softmax at
        `new_item_temperature`), the rest its text-only item-tower vector (ContentConfig)."""
        cc, xp = self.cfg.content, self.xp
        banned = sorted(self.content.rows[i] for i in exclude if i in self.content.rows)
        if not cc.new_item_mix or not new.any() or len(self.content) - len(banned) < 1:
            return vectors
        vectors = xp.asarray(xp.numpy(vectors).copy())
        for j in np.flatnonzero(new).tolist():
            rows, sims = self.content.search(contents[j], cc.new_item_neighbours, banned)
            w = np.exp((xp.numpy(sims) - float(xp.numpy(sims).max())) / cc.new_item_temperature)
            knn = xp.asarray((w / w.sum()).astype(np.float32)) @ self.index.matrix[rows]
            vectors[j] = xp.normalize(cc.new_item_mix * xp.normalize(knn) + (1 - cc.new_item_mix) * vectors[j])
        return vectors

    def upsert(self, item_ids: Sequence[str], texts: Sequence[str], metadata: Sequence[str] | None = None) -> int:
        if len(set(item_ids)) != len(item_ids):
            raise InvalidInput("item_id values must be unique within one request")
        metas = list(metadata) if metadata is not None else ["{}"] * len(item_ids)
        for item_id, text, meta in zip(item_ids, texts, metas):
            check_id("item_id", item_id)
            if not text.strip():
                raise InvalidInput(f"text of item {item_id[:64]!r} is empty")
            check_text(f"text of item {item_id[:64]!r}", text)
            try:
                if not isinstance(json.loads(meta), dict):
                    raise ValueError
            except ValueError:
                raise InvalidInput(f"metadata of item {item_id[:64]!r} is not a JSON object") from None
        # An item known to the trained model keeps its learned id row; new items are text-only.
        known = self.store.item_id_indices(item_ids)
        id_indices = [known.get(i, 0) for i in item_ids]
        with self.stats.stage("embed"):
            vectors, contents, embeddings = self._embed(texts, id_indices)
            self.refresh_index()  # the neighbours a new item's vector is drawn from
            vectors = self._new_item_vectors(vectors, contents, self.known_rows(id_indices) == 0, set(item_ids))
        xp = self.xp
        embeddings = xp.numpy(xp.asarray(embeddings)).astype(np.float32)
        mixtures = [None] * len(item_ids)
        if self.topic_model is not None:  # the build's topics, no refit (freshrec.models.topics)
            with self.stats.stage("topics"):
                mixtures = list(self.topic_model.transform([document(t, m) for t, m in zip(texts, metas)]))
        items = [Item(i, t, v, m, x, c, e, z) for i, t, v, m, x, c, e, z in
                 zip(item_ids, texts, xp.numpy(vectors), metas, id_indices, xp.numpy(contents), embeddings, mixtures)]  # fmt: skip
        with self.stats.stage("store"):
            return self.store.upsert_items(items, space=self.space)

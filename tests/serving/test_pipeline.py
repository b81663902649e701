"""The recommendation pipeline on tiny PyTorch models (no server): filtering, cold start,
validation, upserts, and the reranker's residual start."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import torch

from freshrec.config import ContentConfig, DeployConfig, EventTypeConfig, ModelConfig
from freshrec.models.features import HISTORY_CONTEXT, event_features, history_arrays
from freshrec.models.reranker import Reranker
from freshrec.models.text_encoder import TextEncoder, embed_texts
from freshrec.models.tokenizer import Tokenizer
from freshrec.models.towers import ItemTower, UserTower
from freshrec.serving.engines import TorchEngine
from freshrec.serving.pipeline import InvalidInput, Recommender
from freshrec.store import Event, open_store

_TINY = ModelConfig.tiny()
CFG = dataclasses.replace(_TINY, item=dataclasses.replace(_TINY.item, id_vocab=5))


GENRES = ["Comedy", "Horror", "Drama", "Sci-Fi", "Western"]
TEXTS = [f"Film {j} ({1990 + j}). Genres: {GENRES[j % 5]}" for j in range(30)]


@pytest.fixture(scope="module")
def minilm():
    from freshrec.assets import minilm_dir

    d = minilm_dir()
    text = TextEncoder(d, CFG.text.content_dim)
    text.content.fit(embed_texts(text, Tokenizer(d, CFG.text.max_tokens), TEXTS))  # as a build fits it on its catalog
    return d, text


def recommender(path, minilm, cfg: ModelConfig = CFG) -> Recommender:
    torch.manual_seed(0)
    d, text = minilm
    engine = TorchEngine({"text_encoder": text, "item_tower": ItemTower(cfg.item), "user_tower": UserTower(cfg.user), "reranker": Reranker(cfg.reranker)})
    r = Recommender(open_store(f"sqlite:///{path}"), engine, Tokenizer(d, cfg.text.max_tokens), cfg, DeployConfig(max_k=50))
    r.upsert([f"i{j}" for j in range(30)], TEXTS)
    return r


@pytest.fixture
def rec(tmp_path, minilm):
    return recommender(tmp_path / "s.db", minilm)


def test_tokenizer_pads_to_the_longest_text_and_padding_never_changes_an_embedding(minilm):
    d, text = minilm
    tok = Tokenizer(d, 32)
    short, long_ = "Toy Story (1995)", "A very long title " * 20
    ids, mask = tok([short])
    assert ids.shape == mask.shape and ids.shape[1] % 8 == 0 and ids.shape[1] < 32 and mask[0, -1] == 0
    ids2, mask2 = tok([short, long_])
    assert ids2.shape == (2, 32) and mask2[1].all()  # truncated at max_tokens, the batch padded to it
    assert tok([])[0].shape[0] == 0
    # The same text padded to 8-multiple or to max_tokens: the same embedding.
    n = int(mask.sum())
    full = np.zeros((1, 32), np.int64)
    full_mask = np.zeros((1, 32), np.int64)
    full[0, :n], full_mask[0, :n] = ids[0, :n], 1
    with torch.no_grad():
        a = text(torch.from_numpy(ids), torch.from_numpy(mask))
        b = text(torch.from_numpy(full), torch.from_numpy(full_mask))
        c = text(torch.from_numpy(ids2[:1]), torch.from_numpy(mask2[:1]))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


def test_history_arrays_left_pad_and_keep_the_newest():
    types = np.array([1, 2, 3, 4, 5, 6])
    out = history_arrays(np.arange(6.0), np.full(6, np.nan, np.float32), types, types + 10, max_history=4)
    assert out["history_mask"].tolist() == [[True] * 4]
    assert out["history_types"].tolist() == [[3, 4, 5, 6]] and out["rows"].tolist() == [[13, 14, 15, 16]]
    short = history_arrays(np.arange(2.0), np.full(2, np.nan, np.float32), np.full(2, 2), np.array([7, 8]), max_history=4)
    assert short["history_mask"].tolist() == [[False, False, True, True]]
    assert short["history_types"].tolist() == [[0, 0, 2, 2]] and short["rows"].tolist() == [[0, 0, 7, 8]]


def test_event_features_gap_and_value():
    f = event_features(np.array([0.0, 0.0, 3600.0]), np.array([np.nan, 5.0, 1.0], np.float32))
    assert f[0, 0] == 0 and f[1, 0] == 0 and math.isclose(f[2, 0], math.log1p(3600) / 10, rel_tol=1e-6)
    assert f[:, 1].tolist() == [0.0, 1.0, -1.0]


def test_seen_and_excluded_items_never_come_back(rec):
    now = time.time()
    rec.ingest([Event("u", f"i{j}", "click", now + j) for j in range(5)])
    out = rec.recommend("u", k=10, exclude=["i7", "i8"])
    assert len(out.item_ids) == 10 and out.source == "personal"
    assert not {"i0", "i1", "i2", "i3", "i4", "i7", "i8"} & set(out.item_ids)
    assert list(out.scores) == sorted(out.scores, reverse=True)
    everything = rec.recommend("u", k=50)  # k above what is eligible: all 25 unseen items
    assert sorted(everything.item_ids) == sorted(f"i{j}" for j in range(5, 30))


def test_untrained_reranker_keeps_the_retrieval_order(tmp_path, minilm):
    """The reranker is residual over retrieval with a zero-initialised head (content channels off:
    they add their own scores)."""
    rec = recommender(tmp_path / "s.db", minilm, dataclasses.replace(CFG, content=ContentConfig.off()))
    now = time.time()
    rec.ingest([Event("v", f"i{j}", "click", now + j) for j in (3, 9, 14)])
    out = rec.recommend("v", k=8)
    hist = rec.history_tensors(rec.store.user_history("v", CFG.user.max_history + HISTORY_CONTEXT))
    u = rec.xp.asarray(rec.engine.run("user_tower", hist)["user_vector"])[0]
    rows, _ = rec.index.search(u, 8, [rec.index.rows[f"i{j}"] for j in (3, 9, 14)])
    assert out.item_ids == [rec.index.item_ids[r] for r in rows.tolist()]


def test_trend_prior_lifts_what_everyone_takes_now(tmp_path, minilm):
    """ContentConfig.trend_prior: a warm user's scores gain beta * log(1 + each candidate's count
    over everyone's latest events); other users' events move nothing else in the user's list."""
    off = dataclasses.replace(CFG, content=dataclasses.replace(CFG.content, trend_prior=0.0))
    rec = recommender(tmp_path / "s.db", minilm, off)
    rec.popular_ttl_s = 0.0  # read the counts on every request
    now = time.time()
    rec.ingest([Event("u", f"i{j}", "click", now + j) for j in (1, 2, 3)])
    plain = rec.recommend("u", k=27)  # every unseen item
    trending = plain.item_ids[-1]  # the one this user's models rank last
    rec.ingest([Event(f"o{n}", trending, "click", now + 10 + n) for n in range(20)])
    assert rec.recommend("u", k=27).item_ids == plain.item_ids  # without the prior, others' clicks change nothing
    beta = 5.0
    rec.cfg = dataclasses.replace(off, content=dataclasses.replace(off.content, trend_prior=beta))
    lifted = rec.recommend("u", k=27)
    assert lifted.item_ids[0] == trending
    before, after = dict(zip(plain.item_ids, plain.scores.tolist())), dict(zip(lifted.item_ids, lifted.scores.tolist()))
    assert sorted(after) == sorted(before)
    for item, score in after.items():
        assert score - before[item] == pytest.approx(beta * math.log1p(20) if item == trending else 0.0, abs=1e-4)


def test_cold_start_is_popular_then_query(rec):
    now = time.time()
    rec.ingest([Event(f"p{n}", "i11", "click", now) for n in range(3)] + [Event("p9", "i12", "click", now)])
    cold = rec.recommend("new-user", k=3)
    assert cold.source == "popular" and cold.item_ids[:2] == ["i11", "i12"] and len(cold.item_ids) == 3
    assert rec.recommend("new-user", k=3, query="a western").source == "query"


def test_events_for_unknown_items_are_kept_and_used_once_the_item_exists(rec):
    now = time.time()
    rec.ingest([Event("w", "later", "click", now)])
    assert rec.recommend("w", k=5).source == "popular"  # nothing usable yet
    rec.upsert(["later"], ["Arrives Later (2027). Genres: Drama"])
    out = rec.recommend("w", k=5)
    assert out.source == "personal" and "later" not in out.item_ids


def test_upsert_keeps_the_learned_id_row_of_known_items(rec):
    rec.store.upsert_items([type(rec.store.items_since(0)[0][0])("known", "x", np.ones(CFG.item.dim, np.float32) / 4, "{}", 3)])
    rec.upsert(["known"], ["Known Film (1999). Genres: Comedy"])
    assert rec.store.item_id_indices(["known"]) == {"known": 3}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda r: r.recommend("", k=5), "empty"),
        (lambda r: r.recommend("u", k=0), "k must be"),
        (lambda r: r.recommend("u", k=51), "k must be"),
        (lambda r: r.ingest([Event("u", "i1", "click", float("nan"))]), "timestamp"),
        (lambda r: r.ingest([Event("u", "i1", "click", -1.0)]), "timestamp"),
        (lambda r: r.ingest([Event("u", "i1", "click", time.time() + 7 * 86400)]), "timestamp"),
        (lambda r: r.ingest([Event("u", "i1", "warp", 1.0)]), "event_type"),
        (lambda r: r.ingest([Event("u", "i1", "click", 1.0, value=float("inf"))]), "value"),
        (lambda r: r.ingest([Event("u", "x" * 600, "click", 1.0)]), "longer"),
        (lambda r: r.upsert(["a", "a"], ["t", "t"]), "unique"),
        (lambda r: r.upsert(["a"], [""]), "empty"),
        (lambda r: r.upsert(["a"], ["t"], ["not json"]), "JSON"),
        # issue 15 item 8: the query and every exclude id follow the same rules as other strings
        (lambda r: r.recommend("u", k=5, query="a\x00b"), "NUL"),
        (lambda r: r.recommend("u", k=5, exclude=["i1", "a\x00b"]), "NUL"),
        (lambda r: r.recommend("u", k=5, exclude=["x" * 1_000_000]), "longer"),
        (lambda r: r.recommend("u", k=5, exclude=[""]), "empty"),
    ],
)
def test_invalid_requests_are_refused(rec, call, match):
    with pytest.raises(InvalidInput, match=match):
        call(rec)


def test_ingest_stores_event_type_names_as_the_builds_types_and_refuses_unknown_ones(tmp_path, minilm):
    cfg = dataclasses.replace(CFG, events=EventTypeConfig.parse("return=dislike"))  # as `build --event-types` saves it
    rec = recommender(tmp_path / "s.db", minilm, cfg)
    now = time.time()
    assert rec.ingest([Event("u", "i1", "rating", now, 2.0), Event("u", "i2", "return", now + 1), Event("u", "i3", "skip", now + 2)]) == 3
    assert list(rec.store.user_history("u", 10).event_types) == ["rate", "dislike", "skip"]
    with pytest.raises(InvalidInput, match=r"unknown event_type 'refund'; known types: view, click, rate.*--event-types"):
        rec.ingest([Event("u", "i4", "click", now + 3), Event("u", "i4", "refund", now + 4)])
    assert len(rec.store.user_history("u", 10).event_types) == 3  # one bad event refuses the whole request
    with pytest.raises(InvalidInput, match="unknown event_type 'return'"):  # a build without the alias
        recommender(tmp_path / "t.db", minilm).ingest([Event("u", "i1", "return", now)])


def test_configured_event_weights_drive_the_content_channel(tmp_path, minilm):
    """`--event-weights`: a type weighted below 0 is an explicit "no" (scaled up as dislike is),
    one weighted 0 says nothing (the interest profile reads the same table: interest_events)."""
    from freshrec.serving.pipeline import content_weight

    now = time.time()
    events = [Event("u", "i1", "click", now), Event("u", "i2", "view", now + 1)]
    cfg = dataclasses.replace(CFG, events=EventTypeConfig(weights=(("view", -0.5), ("click", 0.0))))
    default, custom = recommender(tmp_path / "a.db", minilm), recommender(tmp_path / "b.db", minilm, cfg)
    for r in (default, custom):
        r.ingest(events)
        r.refresh_index()
    c1, c2 = (np.asarray(custom.content.matrix[custom.content.rows[i]]) for i in ("i1", "i2"))
    s = np.asarray(custom._short_profile(custom.store.user_history("u", 10)))  # only the view counts, negated and scaled up
    assert np.allclose(s, -cfg.content.negative_scale * c2, atol=1e-5)
    d = np.asarray(default._short_profile(default.store.user_history("u", 10)))  # both count, positively
    decay = CFG.content.short_decay
    w1, w2 = 0.5 * decay, 0.3
    assert np.allclose(d, (w1 * c1 + w2 * c2) / (w1 + w2), atol=1e-5)
    assert content_weight("view", math.nan, cfg.events.content_weights) == -0.5 and content_weight("rate", 5.0, cfg.events.content_weights) == 1.0


class _CountingEngine:
    """Wraps an engine, recording which models ran."""

    def __init__(self, inner) -> None:
        self.inner, self.ran = inner, []

    def run(self, model, inputs):
        self.ran.append(model)
        return self.inner.run(model, inputs)


@pytest.mark.parametrize(("give_up_after", "stage", "ran"), [(0, "store", []), (1, "user_tower", ["user_tower"]), (2, "retrieval", ["user_tower"])])
def test_a_request_whose_client_gave_up_is_dropped_between_stages(rec, give_up_after, stage, ran):
    """RELIABILITY 13: the pipeline asks between its stages whether the client is still there;
    once it is not, nothing more is computed (the reranker, the most expensive stage, never runs)."""
    from freshrec.serving.pipeline import Cancelled

    now = time.time()
    rec.ingest([Event("u1", f"i{j}", "click", now - 100 + j) for j in range(5)])
    rec.engine = engine = _CountingEngine(rec.engine)
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > give_up_after

    with pytest.raises(Cancelled) as dropped:
        rec.recommend("u1", k=5, cancelled=cancelled)
    assert dropped.value.stage == stage and engine.ran == ran
    engine.ran.clear()
    assert len(rec.recommend("u1", k=5, cancelled=lambda: False).item_ids) == 5  # still there: served in full
    assert engine.ran == ["user_tower", "reranker"]


# -- content channels (ModelConfig.content) on the synthetic catalog: 6 films of each of 5 genres --
def _genre(item_id: str) -> str:
    return GENRES[int(item_id[1:]) % 5]


def test_a_user_who_switches_genre_gets_it_next(rec):
    """Ten comedy clicks, then four five-star westerns: the two westerns left lead the list."""
    now = time.time()
    rec.ingest([Event("s", f"i{j}", "click", now - 3600 + j) for j in range(0, 30, 5)])  # every comedy
    before = rec.recommend("s", k=5).item_ids
    rec.ingest([Event("s", f"i{j}", "rate", now + j, 5.0) for j in (4, 9, 14, 19)])
    after = rec.recommend("s", k=5).item_ids
    assert [_genre(i) for i in after[:2]] == ["Western", "Western"], (before, after)


def test_dislikes_push_a_genre_down(rec):
    now = time.time()
    rec.ingest([Event("n", f"i{j}", "click", now - 3600 + j) for j in (1, 6, 2, 7)])  # horror and drama
    share = lambda ids: sum(_genre(i) == "Horror" for i in ids)  # noqa: E731
    before = share(rec.recommend("n", k=10).item_ids)
    rec.ingest([Event("n", f"i{j}", "dislike", now + j) for j in (11, 16)])
    after = share(rec.recommend("n", k=10).item_ids)
    assert before >= 2 and after == 0, (before, after)


def test_a_query_naming_a_genre_retrieves_it(rec):
    cold = rec.recommend("first-visit", k=6, query="a western with cowboys")
    assert cold.source == "query" and [_genre(i) for i in cold.item_ids] == ["Western"] * 6
    now = time.time()
    rec.ingest([Event("w", f"i{j}", "click", now + j) for j in (0, 5, 10)])  # comedies
    own = rec.recommend("w", k=10).item_ids
    asked = rec.recommend("w", k=10, query="a western with cowboys").item_ids
    assert sum(_genre(i) == "Western" for i in asked) >= 5
    assert len(set(own) & set(asked)) >= CFG.content.query_keep  # the user's own best picks stay


def test_a_new_item_is_placed_among_its_content_neighbours(rec):
    """A re-listed film (same text, new id) takes after the original's learned vector, which its
    text alone does not give: half its vector comes from its content-nearest items."""
    original = rec.store.items_since(0)[0][9]
    text_only = rec.xp.numpy(rec.embed_items([TEXTS[9]], [0]))[0]
    v = np.random.default_rng(0).standard_normal(CFG.item.dim).astype(np.float32)
    v -= (v @ text_only) * text_only
    v /= np.linalg.norm(v)  # a learned vector orthogonal to what the text gives
    rec.store.upsert_items([dataclasses.replace(original, vector=v)])
    rec.upsert(["twin"], [TEXTS[9]])
    rec.refresh_index()
    twin = rec.index.matrix[rec.index.rows["twin"]]
    assert float(twin @ v) > 0.6 and float(twin @ text_only) > 0.6
    assert rec.store.items_since(0)[0][-1].content is not None

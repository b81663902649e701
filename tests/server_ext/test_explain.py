"""recommend's optional `explanation` output on a real tritonserver: computed only when asked
for, equal to the reference pipeline's, naming a topic both the user and the item carry; a new
event of another topic moves the profile; a new item gets its topic mixture at upsert."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from freshrec.client import FreshrecClient
from freshrec.contract import TOPICS_FILE
from freshrec.models.checkpoints import CHECKPOINTS
from freshrec.models.topics import TopicModel, document
from freshrec.store import open_store
from tests.server_ext.test_metrics import scrape, value
from tests.triton_calls import _input, reference, users_of


def _mixtures(state_path: Path) -> dict[str, np.ndarray]:
    store = open_store(f"sqlite:///{state_path}")
    try:
        return {it.item_id: it.topics for it in store.items_since(0)[0]}
    finally:
        store.close()


def test_explanation_only_when_requested_and_equal_to_the_reference(tiny_build, served):
    user = users_of(served.state_path, 1)[0]
    raw = grpcclient.InferenceServerClient(served.grpc_url)
    inputs = [_input("user_id", [user], "BYTES"), _input("k", [5], "INT32")]
    plain = raw.infer("recommend", inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in ("item_ids", "scores")])
    assert plain.as_numpy("explanation") is None
    # Naming no output (Triton then asks for all, as perf_analyzer does) or naming the explanation
    # itself computes none without the explain input: the answer is the list alone.
    for outputs in (None, [grpcclient.InferRequestedOutput(n) for n in ("item_ids", "scores", "explanation")]):
        every = raw.infer("recommend", inputs, outputs=outputs)
        assert every.as_numpy("explanation") is None
        assert every.as_numpy("item_ids").tolist() == plain.as_numpy("item_ids").tolist()
    off = raw.infer("recommend", [*inputs, _input("explain", [False], "BOOL")])
    assert off.as_numpy("explanation") is None
    with FreshrecClient(served.grpc_url, timeout_s=10) as client:
        assert client.recommend(user, k=5).explanation is None
        m = scrape(served.metrics_url)
        assert value(m, "freshrec_stage_latency_seconds_count", model="recommend", stage="explain") == 0  # nothing computed
        rec = client.recommend(user, k=5, explain=True)
    assert value(scrape(served.metrics_url), "freshrec_stage_latency_seconds_count", model="recommend", stage="explain") == 1
    assert rec.item_ids == [x.decode() for x in plain.as_numpy("item_ids")]

    ex = rec.explanation
    ref = reference(tiny_build, served.state_path)
    topics = ref.topic_model
    expected = ref.recommend(user, k=5, explain=True)
    assert ex == json.loads(json.dumps(expected.explanation))
    assert [e["item_id"] for e in ex["items"]] == rec.item_ids
    assert 1 <= len(ex["user"]["topics"]) <= ref.cfg.topics.explain_topics and ex["user"]["events"] > 0
    for t in ex["user"]["topics"]:
        assert t["words"] == topics.top_words(t["topic"], ref.cfg.topics.top_words) and 0 < t["weight"] <= 1
    # the shared topic is in both: the user's profile and the item's stored mixture
    profile = ref.interest_profile(ref.store.user_history(user, ref.cfg.user.max_history + 1))
    mixtures = _mixtures(served.state_path)
    history = set(ref.store.user_history(user, 10**6).seen)
    for e in ex["items"]:
        t = e["topic"]
        assert e["user_share"] == round(float(profile[t]), 4) > 0
        assert e["item_share"] == round(float(mixtures[e["item_id"]][t]), 4) > 0
        assert t == int(np.argmax(profile * mixtures[e["item_id"]]))
        assert e["because"]["item_id"] in history and mixtures[e["because"]["item_id"]][t] > 0
        assert e["reason"].startswith("because you watched ") and e["because"]["text"]


def test_a_new_event_of_another_topic_moves_the_profile(tiny_build, served):
    user = users_of(served.state_path, 2)[1]
    mixtures = _mixtures(served.state_path)
    with FreshrecClient(served.grpc_url, timeout_s=10) as client:
        before = client.recommend(user, k=5, explain=True).explanation["user"]["topics"]
        top = before[0]["topic"]
        # the items most purely of a topic that is not the user's top one, which they have not rated
        store = open_store(f"sqlite:///{served.state_path}")
        seen = store.user_history(user, 10**6).seen
        store.close()
        other = max((t for t in range(len(next(iter(mixtures.values())))) if t != top),
                    key=lambda t: sum(sorted((m[t] for i, m in mixtures.items() if i not in seen), reverse=True)[:6]))  # fmt: skip
        picks = sorted((i for i in mixtures if i not in seen), key=lambda i: -mixtures[i][other])[:6]
        now = time.time()
        from freshrec.client import EventIn

        assert client.ingest([EventIn(user, i, "rate", now + j, 5.0) for j, i in enumerate(picks)]) == 6
        after = client.recommend(user, k=5, explain=True).explanation["user"]["topics"]
    weight = lambda topics, t: next((x["weight"] for x in topics if x["topic"] == t), 0.0)  # noqa: E731
    assert after[0]["topic"] == other, (before, after)
    assert weight(after, other) > weight(before, other) and weight(after, top) < before[0]["weight"]


def test_a_new_item_gets_its_topic_mixture_at_upsert(tiny_build, served):
    text = "Nebula Harbor (2026). Genres: Sci-Fi, Adventure"
    meta = {"genres": ["Sci-Fi", "Adventure"]}
    with FreshrecClient(served.grpc_url, timeout_s=10) as client:
        from freshrec.client import ItemIn

        assert client.upsert_items([ItemIn("nebula-harbor", text, meta)]) == 1
    topics = TopicModel.load(tiny_build["build_dir"] / CHECKPOINTS / TOPICS_FILE)
    np.testing.assert_allclose(_mixtures(served.state_path)["nebula-harbor"], topics.transform([document(text, meta)])[0], atol=1e-7)

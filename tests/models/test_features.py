"""One history recipe: the window training cuts from a user's whole sequence equals the window
the server builds from the events it reads, and the benchmarks' input generation builds the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.config import DeployConfig, ModelConfig
from freshrec.models.features import HISTORY_CONTEXT, event_type_index
from freshrec.serving.pipeline import Recommender
from freshrec.store import Event, Item, open_store
from freshrec.training.train import history_inputs, make_sequence, pad_batch

CFG = ModelConfig.tiny()
L = CFG.user.max_history


@pytest.fixture
def served(tmp_path):
    """A store with 30 items and two users (one with more than a window of events, one with
    fewer), and a Recommender over it: only its index and history recipe are used."""
    rng = np.random.default_rng(0)
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    vecs = rng.standard_normal((30, CFG.item.dim)).astype(np.float32)
    store.upsert_items([Item(f"i{j}", f"item {j}", v / np.linalg.norm(v)) for j, v in enumerate(vecs)])
    types = ["rate", "click", "like", "view", "purchase", "skip"]
    ts = np.cumsum(rng.integers(0, 5000, 3 * L)).astype(np.float64) + 1e9  # gaps of 0 (equal stamps) included
    long = [Event("long", f"i{rng.integers(30)}", types[j % 6], float(ts[j]), float(rng.integers(1, 6)) if j % 3 else float("nan"))
            for j in range(3 * L)]  # fmt: skip
    short = [Event("short", f"i{j}", "click", 1e9 + 60.0 * j) for j in range(L // 2)]
    store.add_events(long + short)
    rec = Recommender(store, engine=None, tokenizer=None, cfg=CFG, deploy=DeployConfig())
    rec.refresh_index()
    yield rec, {"long": long, "short": short}
    store.close()


def _training_window(rec: Recommender, events: list[Event]) -> dict[str, np.ndarray]:
    """What training feeds the user tower for the window ending after `events`."""
    seq = make_sequence(
        "u", [rec.index.rows[e.item_id] for e in events], [event_type_index(e.event_type) for e in events],
        np.array([e.timestamp for e in events]), np.array([e.value for e in events], np.float32),
    )  # fmt: skip
    batch = pad_batch([seq], [len(events)], L)
    return {k: v.numpy() for k, v in history_inputs(batch, torch.from_numpy(rec.index.matrix)).items()}


@pytest.mark.parametrize("user", ["long", "short"])
def test_training_and_serving_build_the_same_window(served, user):
    rec, events = served
    expected = _training_window(rec, events[user])
    got = rec.history_tensors(rec.store.user_history(user, L + HISTORY_CONTEXT))
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert got["history_mask"].sum() == min(L, len(events[user]))


def test_a_window_read_without_its_context_event_would_differ(served):
    """The skew the context event removes: read exactly L events and the window's oldest event
    loses its time gap (0 instead of the gap training computed)."""
    rec, events = served
    expected = _training_window(rec, events["long"])
    bare = rec.history_tensors(rec.store.user_history("long", L))
    assert expected["history_features"][0, 0, 0] > 0 and bare["history_features"][0, 0, 0] == 0
    np.testing.assert_array_equal(bare["history_features"][0, 1:], expected["history_features"][0, 1:])


def test_the_benchmarks_input_generation_uses_the_same_recipe(served):
    from freshrec.offline.benchmarks.serving import Dataset, _history

    rec, events = served
    items, _ = rec.store.items_since(0)
    ds = Dataset(list(rec.store.events()), items, ["long", "short"], L, CFG.reranker.num_candidates, CFG.text.max_tokens)
    for user in ("long", "short"):
        got = _history(ds, user, rec.index.rows, rec.index.matrix)
        served_window = rec.history_tensors(rec.store.user_history(user, L + HISTORY_CONTEXT))
        for name, a in served_window.items():
            np.testing.assert_array_equal(got[name], a[0], err_msg=f"{user}: {name}")

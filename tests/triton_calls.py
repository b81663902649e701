"""Raw tritonclient calls to the served models and the reference pipeline beside them, shared by
the integration tests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from freshrec.config import DeployConfig
from freshrec.contract import TOPICS_FILE
from freshrec.models.checkpoints import CHECKPOINTS
from freshrec.models.topics import TopicModel
from freshrec.serving.engines import load_reference
from freshrec.serving.pipeline import Recommender
from freshrec.store import open_store


def _input(name, values, dtype):
    arr = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=object if dtype == "BYTES" else None)
    if dtype == "INT32":
        arr = arr.astype(np.int32)
    elif dtype == "FP64":
        arr = arr.astype(np.float64)
    elif dtype == "FP32":
        arr = arr.astype(np.float32)
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


QUEUE_REFUSALS = ("Request timeout expired", "Exceeds maximum queue size")


def retry_refused(fn, attempts: int = 5, backoff_s: float = 0.05):
    """Call fn, retrying only the bounded queue's retriable refusal (UNAVAILABLE), with backoff;
    anything else, or a refusal on the last attempt, is raised."""
    for attempt in range(attempts):
        try:
            return fn()
        except InferenceServerException as exc:
            refused = "UNAVAILABLE" in str(exc.status()) and any(t in exc.message() for t in QUEUE_REFUSALS)
            if not refused or attempt == attempts - 1:
                raise
            time.sleep(backoff_s * 2**attempt)


def recommend(client, user, k=10, query=None, exclude=None):
    inputs = [_input("user_id", [user], "BYTES"), _input("k", [k], "INT32")]
    if query is not None:
        inputs.append(_input("query", [query], "BYTES"))
    if exclude:
        inputs.append(_input("exclude_item_ids", exclude, "BYTES"))
    r = client.infer("recommend", inputs)
    return [x.decode() for x in r.as_numpy("item_ids")], r.as_numpy("scores")


def ingest(client, users, items, ts, types=None, event_ids=None, values=None):
    inputs = [
        _input("user_id", users, "BYTES"),
        _input("item_id", items, "BYTES"),
        _input("event_type", types or ["click"] * len(users), "BYTES"),
        _input("timestamp", ts, "FP64"),
    ]
    if event_ids is not None:
        inputs.append(_input("event_id", event_ids, "BYTES"))
    if values is not None:
        inputs.append(_input("value", values, "FP32"))
    return int(client.infer("ingest_events", inputs).as_numpy("accepted")[0])


def upsert(client, ids, texts):
    inputs = [_input("item_id", ids, "BYTES"), _input("text", texts, "BYTES")]
    return int(client.infer("upsert_items", inputs).as_numpy("accepted")[0])


def reference(tiny_build, state_path: Path) -> Recommender:
    engine, tokenizer, cfg = load_reference(tiny_build["build_dir"])
    topics = TopicModel.load(tiny_build["build_dir"] / CHECKPOINTS / TOPICS_FILE)
    return Recommender(open_store(f"sqlite:///{state_path}"), engine, tokenizer, cfg, DeployConfig(), topics=topics)


def users_of(state_path: Path, n: int) -> list[str]:
    store = open_store(f"sqlite:///{state_path}")
    try:
        return sorted(store.user_ids())[:n]
    finally:
        store.close()


def assert_same(served, expected):
    ids, scores = served
    assert ids == expected.item_ids
    np.testing.assert_allclose(scores, expected.scores, atol=2e-4, rtol=1e-4)

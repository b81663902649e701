"""`freshrec rollout` / `rollback` against a supervised tritonserver under client traffic: no
request fails, every response is wholly version 1's or wholly version 2's, the served version
changes, a failing rollout keeps the old version, a rollback returns to it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from freshrec.config import DeployConfig
from freshrec.export.repository import served_versions
from freshrec.lifecycle.rollout import RolloutError, Triton, rollback, rollout
from freshrec.serving.engines import load_reference
from freshrec.serving.pipeline import Recommender
from freshrec.store import open_store
from tests.server_ext.test_metrics import scrape, value
from tests.triton_calls import recommend, upsert

USERS = 8


def version_reference(repo: Path, version: int, url: str) -> Recommender:
    engine, tokenizer, cfg = load_reference(repo / "recommend" / str(version))
    return Recommender(open_store(url), engine, tokenizer, cfg, DeployConfig(version=version))


class Watch:
    """Two threads calling `recommend` for a few users in a loop through freshrec's client (what
    a production service runs: it retries UNAVAILABLE with backoff), keeping every answer. Triton
    2.51 refuses a request now and then while another model's version loads (the queue's
    "Request timeout expired" after a 0.5 s stall, about one load in three on 2 cores; none in
    steady state); the retry absorbs it, and `freshrec bench rollout` counts such refusals
    without retries."""

    def __init__(self, url: str, users: list[str]) -> None:
        self.url, self.users = url, users
        self.answers: list[tuple[str, list[str], np.ndarray]] = []
        self.errors: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(2)]

    def __enter__(self) -> "Watch":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, i: int) -> None:
        from freshrec.client import FreshrecClient

        client = FreshrecClient(self.url, timeout_s=5.0)
        j = i
        while not self._stop.is_set():
            user = self.users[j % len(self.users)]
            j += 1
            try:
                rec = client.recommend(user, k=10)
                self.answers.append((user, rec.item_ids, np.asarray(rec.scores, np.float32)))
            except Exception as exc:  # noqa: BLE001 - asserted empty by the test
                self.errors.append((type(exc).__name__, str(exc)))
        client.close()


def matches(answer, expected) -> bool:
    _, ids, scores = answer
    return ids == expected.item_ids and np.allclose(scores, expected.scores, atol=2e-4, rtol=1e-4)


def start(supervised, own):
    sup = supervised(repository=own["repo"], env={"FRESHREC_STATE": own["url"]})
    return sup, Triton(sup.server.http_url, sup.options.admin_key)


def test_rollout_under_traffic_then_rollback(updated, copy_of, supervised):
    own = copy_of(updated)
    sup, triton = start(supervised, own)
    users = sup.users[:USERS]
    client = grpcclient.InferenceServerClient(sup.server.grpc_url)
    # an item written by version 1 while it serves: version 2 has no vector of it in the store
    # and computes its own from the stored text embedding once it loads
    assert upsert(client, ["late:item"], ["Late Arrival (1998) Comedy|Romance"]) == 1
    store = open_store(own["url"])
    assert store.catalog_since(0, space=2).missing.sum() == 1
    store.close()
    v1, v2 = version_reference(own["repo"], 1, own["url"]), version_reference(own["repo"], 2, own["url"])
    want = {u: (v1.recommend(u, k=10), v2.recommend(u, k=10)) for u in users}
    assert any(want[u][0].item_ids != want[u][1].item_ids for u in users)  # the versions answer differently

    with Watch(sup.server.grpc_url, users) as watch:
        time.sleep(1.0)
        result = rollout(own["repo"], triton, 2, state=own["url"])
        time.sleep(1.0)
    assert result["version"] == 2 and result["previous"] == [1]
    assert watch.errors == [], watch.errors[:5]
    assert len(watch.answers) > 20
    mixed = [a for a in watch.answers if not (matches(a, want[a[0]][0]) or matches(a, want[a[0]][1]))]
    assert mixed == [], f"{len(mixed)} answers are neither version 1's nor version 2's"
    assert matches(watch.answers[-1], want[watch.answers[-1][0]][1])  # version 2 serves at the end
    assert triton.loaded()["recommend"] == {2} and served_versions(own["repo"]) == [2]
    for u in users:
        ids, scores = recommend(client, u)
        assert ids == want[u][1].item_ids
    assert value(scrape(sup.server.metrics_url), "freshrec_model_version", model="recommend") == 2.0
    # the item version 1 wrote is known to version 2 too (its vector computed by the instance)
    ids, _ = recommend(client, users[0], k=5, query="Late Arrival (1998) Comedy|Romance")
    ref_ids = v2.recommend(users[0], k=5, query="Late Arrival (1998) Comedy|Romance").item_ids
    assert ids == ref_ids and "late:item" in ids

    back = rollback(own["repo"], triton, state=own["url"])
    assert back["version"] == 1 and triton.loaded()["recommend"] == {1}
    for u in users:
        assert recommend(client, u)[0] == want[u][0].item_ids
    client.close()


def test_a_failing_rollout_keeps_the_old_version(updated, copy_of, supervised):
    own = copy_of(updated)
    graph = own["repo"] / "user_tower" / "2" / "model.onnx"
    graph.unlink()  # a hard link to the shared build's file: replaced, never written through
    graph.write_bytes(b"not an onnx graph")
    sup, triton = start(supervised, own)
    users = sup.users[:USERS]
    v1 = version_reference(own["repo"], 1, own["url"])
    with Watch(sup.server.grpc_url, users) as watch:
        time.sleep(1.0)
        with pytest.raises(RolloutError, match="was not served"):
            rollout(own["repo"], triton, 2, state=own["url"])
        time.sleep(1.0)
    assert watch.errors == [], watch.errors[:5]
    assert all(matches(a, v1.recommend(a[0], k=10)) for a in watch.answers[-4:])
    assert triton.loaded()["recommend"] == {1} and served_versions(own["repo"]) == [1]
    assert sup.health().ready


def test_a_refused_candidate_is_not_rolled_out(updated, copy_of):
    import json

    from freshrec.export.repository import read_card

    own = copy_of(updated)
    card = read_card(own["repo"], 2)
    card["gate"]["passed"] = False
    (own["repo"] / "recommend" / "2" / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(RolloutError, match="did not pass its gate"):
        rollout(own["repo"], Triton("127.0.0.1:1", "x"), 2)  # refused before any call to a server


def test_a_server_following_the_repository_serves_the_pinned_version(updated, copy_of, supervised):
    """`freshrec rollout --pin-only` (an update job) pins; `freshrec serve --follow-versions`'
    follower rolls the pinned version out on its own server, and back after a pinned rollback."""
    from freshrec.lifecycle.rollout import follow, pin_only

    own = copy_of(updated)
    sup, triton = start(supervised, own)
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(own["repo"], triton, stop, 0.3), daemon=True)
    thread.start()
    try:
        pin_only(own["repo"], 2, state=own["url"])
        deadline = time.monotonic() + 120
        while triton.loaded().get("recommend") != {2} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert triton.loaded()["recommend"] == {2}
        rollback(own["repo"], None, state=own["url"])  # --pin-only: the parent is pinned again
        assert served_versions(own["repo"]) == [1]
        deadline = time.monotonic() + 120
        while triton.loaded().get("recommend") != {1} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert triton.loaded()["recommend"] == {1}
    finally:
        stop.set()
        thread.join(10)


def test_versions_command_lists_the_cards(updated, capsys):
    from freshrec.cli import main

    assert main(["versions", "--repository", str(updated["repo"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["version", "parent"]
    assert out[1].split()[0] == "1" and out[1].rstrip().endswith("*")  # served
    assert out[2].split()[:2] == ["2", "1"] and "passed" in out[2]

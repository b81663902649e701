"""Two real tritonservers sharing one Redis state store (a standalone server, or a Redis Cluster of
3 primaries + 3 replicas): a write on one is served by the other, and a Redis outage is UNAVAILABLE
on both, then recovers with nothing acknowledged lost."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from freshrec.config import DeployConfig
from freshrec.serving.engines import load_reference
from freshrec.serving.pipeline import Recommender
from freshrec.store import copy_state, open_store
from tests.triton_calls import assert_same, ingest, recommend, upsert, users_of


def _unavailable(fn) -> str:
    with pytest.raises(InferenceServerException) as info:
        fn()
    assert info.value.status() == "StatusCode.UNAVAILABLE", info.value
    return info.value.message()


class _Shared:
    """One Redis state for the servers: `.url`, `.kill()` (every node), `.restart()`."""

    def __init__(self, url, kill, restart):
        self.url, self.kill, self.restart = url, kill, restart


@pytest.fixture(params=["redis", "redis-cluster"])
def shared_redis(request):
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return _Shared(server.url, server.kill, server.restart)
    cluster = request.getfixturevalue("private_redis_cluster")

    def restart():  # every node from its AOF and nodes-<port>.conf; the cluster comes back as it was
        for port in cluster.ports:
            cluster.start_node(port)
        cluster.wait_healthy(time.monotonic() + 30)

    return _Shared(cluster.url, cluster.stop, restart)


def test_two_servers_share_one_redis_store(tiny_build, shared_redis, triton_server_factory):
    redis_server = shared_redis
    state = Path(tiny_build["build_dir"]) / "state.db"
    src = open_store(f"sqlite:///{state}")
    dst = open_store(redis_server.url)
    n_items, n_events = copy_state(src, dst)
    assert n_items == len(src.items_since(0)[0]) and n_events == src.count_events() == dst.count_events()
    assert dst.popular_items(20, 10000) == src.popular_items(20, 10000)
    src.close()

    engine, tokenizer, cfg = load_reference(tiny_build["build_dir"])
    ref = Recommender(open_store(redis_server.url), engine, tokenizer, cfg, DeployConfig())
    repo = Path(tiny_build["repositories"]["embedded"])
    env = {"FRESHREC_STATE": redis_server.url}
    a = grpcclient.InferenceServerClient(triton_server_factory(repo, env=env).grpc_url)
    b = grpcclient.InferenceServerClient(triton_server_factory(repo, env=env).grpc_url)
    user = users_of(state, 1)[0]

    # both servers serve the reference over the same Redis state
    assert_same(recommend(a, user, k=10), ref.recommend(user, k=10))
    assert_same(recommend(b, user, k=10), ref.recommend(user, k=10))

    # ingest on A, recommend on B: the clicked item is seen (excluded) and B equals the reference
    clicked = recommend(b, user, k=1)[0][0]
    assert ingest(a, [user], [clicked], [time.time()], event_ids=["redis-e1"]) == 1
    after = ref.recommend(user, k=10)
    assert clicked not in after.item_ids
    assert_same(recommend(b, user, k=10), after)
    assert ingest(b, [user], [clicked], [time.time()], event_ids=["redis-e1"]) == 0  # retry via the other server

    # an item upserted on A is retrievable on B by its own text
    text = "Nebula Drifters (2026). Genres: Sci-Fi, Space Opera, Adventure"
    assert upsert(a, ["redis-new-1"], [text]) == 1
    assert recommend(b, "redis-fresh-user", k=5, query=text)[0][0] == "redis-new-1"

    # Redis down: both servers answer UNAVAILABLE, fast, and acknowledge nothing
    acked = dst.count_events()
    redis_server.kill()
    t0 = time.monotonic()
    msg = _unavailable(lambda: ingest(a, [user], ["1"], [time.time()], event_ids=["redis-down"]))
    assert "state store unavailable" in msg
    _unavailable(lambda: recommend(b, user, k=10))
    _unavailable(lambda: upsert(b, ["redis-new-2"], ["Never Written (2026)"]))
    assert time.monotonic() - t0 < 10.0

    # Redis back: both servers work again, nothing acknowledged was lost, nothing refused was kept
    redis_server.restart()
    assert dst.count_events() == acked
    h = dst.user_history(user, 200)
    assert clicked in h.seen and h.item_ids[-1] == clicked  # the refused event was not kept
    assert ingest(a, [user], ["1"], [time.time()], event_ids=["redis-down"]) == 1
    after = ref.recommend(user, k=10)
    assert "1" not in after.item_ids
    assert_same(recommend(b, user, k=10), after)
    assert recommend(a, "redis-fresh-user", k=5, query=text)[0][0] == "redis-new-1"
    assert dst.count_events() == acked + 1 and not math.isnan(after.scores[0])
    ref.store.close()
    dst.close()

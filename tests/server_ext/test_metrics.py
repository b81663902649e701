"""The freshrec metrics on Triton's metrics port, scraped after real traffic."""

from __future__ import annotations

import time
import urllib.request

import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.triton_calls import ingest, recommend, upsert, users_of


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_pipeline_metrics_are_exported(served):
    c = grpcclient.InferenceServerClient(served.grpc_url)
    users = users_of(served.state_path, 3)
    for u in users:
        recommend(c, u, k=5)
    recommend(c, "metrics-cold-user", k=5)  # popular fallback
    recommend(c, "metrics-cold-user", k=5, query="a western")  # query-only
    now = time.time()
    assert ingest(c, [users[0]] * 3, ["1", "2", "3"], [now - 30, now - 20, now - 10]) == 3
    assert upsert(c, ["metrics-item"], ["Metric Film (1997). Genres: Drama"]) == 1

    m = scrape(served.metrics_url)
    stage = "freshrec_stage_latency_seconds_count"
    assert value(m, stage, model="recommend", stage="store") >= 5
    assert value(m, stage, model="recommend", stage="user_tower") >= 3
    assert value(m, stage, model="recommend", stage="rerank") >= 3
    assert value(m, stage, model="recommend", stage="retrieval") >= 4
    assert value(m, stage, model="recommend", stage="embed") >= 1
    assert value(m, stage, model="upsert_items", stage="embed") == 1
    assert value(m, "freshrec_fallbacks_total", model="recommend", kind="popular") >= 1
    assert value(m, "freshrec_fallbacks_total", model="recommend", kind="query") >= 1
    assert value(m, "freshrec_items_added_total", model="upsert_items") == 1
    assert value(m, "freshrec_index_items", model="recommend") > 0
    assert value(m, "freshrec_index_recall", model="recommend") == 1.0  # 1,682 items: the exact scan
    assert value(m, "freshrec_freshness_lag_seconds_count", model="ingest_events") == 3
    lag_sum = value(m, "freshrec_freshness_lag_seconds_sum", model="ingest_events")
    assert 55 <= lag_sum <= 120  # 30 + 20 + 10 s plus the time the calls took
    assert value(m, "freshrec_store_errors_total", model="ingest_events") == 0
    assert value(m, "nv_inference_queue_duration_us", model="recommend") >= 0  # Triton's own, for autoscaling
    assert value(m, "nv_inference_request_success_total", model="recommend") == 5
    # the embedded flavour runs the towers inside the pipeline's process: no tower requests
    assert value(m, "nv_inference_request_success_total", model="user_tower") == 0

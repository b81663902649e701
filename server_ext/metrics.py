"""Prometheus metrics from the Python backend (`pb_utils.MetricFamily`), served by Triton's own
metrics endpoint next to its nv_inference_* series.

    freshrec_stage_latency_seconds{model,stage}   histogram: store, user_tower, retrieval, rerank, embed, explain, topics
    freshrec_freshness_lag_seconds{model}         histogram: event timestamp -> acknowledged ingest
    freshrec_index_items{model}                   gauge: items in this instance's retrieval index
    freshrec_index_recall{model}                  gauge: the index's self-checked recall@200 (1 when exact)
    freshrec_items_added_total{model}             counter: items written by upsert_items
    freshrec_store_errors_total{model}            counter: state store unavailable or failing
    freshrec_fallbacks_total{model,kind}          counter: non-personal answers (popular, query)
    freshrec_cancelled_total{model,stage}         counter: requests dropped because the client gave up,
                                                  by the last stage done ("start": none)
    freshrec_model_version{model}                 gauge: the model version this model last loaded
    freshrec_model_created_timestamp_seconds{model}  gauge: when that version was made (build or update)
    freshrec_model_data_cutoff_timestamp_seconds{model}  gauge: newest event timestamp it learned from
    freshrec_model_update_seconds{model}          gauge: how long the update that made it took
    freshrec_model_gate_ndcg10{model,version}     gauge: the gate's NDCG@10, version "candidate" / "parent"
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from freshrec.serving.pipeline import Stats

# Seconds: sub-millisecond store reads up to multi-second stalls.
LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
# Seconds from the event's own timestamp to its acknowledgement: clients batching or lagging.
LAG_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600, 86400]
STAGES = ("store", "user_tower", "retrieval", "rerank", "embed", "explain", "topics")
CANCEL_STAGES = ("start", "store", "user_tower", "retrieval")  # where Recommender.recommend checks

# Every TritonStats (with its pb_utils metrics) this stub process creates, kept until it exits.
# Triton 2.51 counts the users of a labelled series per MetricFamily *object*, but every stub's
# family of the same name is one prometheus family: two stubs asking for equal labels (a model's
# two instances; a new or reloaded version beside the serving one) share one series, and the
# first stub whose Metric is garbage-collected frees it under the others. A load whose
# initialize raised did that (its half-built Service went with the exception) and the serving
# version's next observation crashed the server (use-after-free in prometheus::Histogram::Observe;
# docs/reliability.md, item 21). So a stub never deletes a Metric while it lives; when a stub
# exits, Triton keeps its series (a few KB).
_KEEP_ALIVE: list["TritonStats"] = []


class TritonStats(Stats):
    def __init__(self, pb, model: str) -> None:
        _KEEP_ALIVE.append(self)  # first: even a half-built one must never be collected
        self.pb = pb
        self._card_metrics: list = []
        F = pb.MetricFamily
        labels = {"model": model}
        # The families must outlive their metrics: Triton refuses updates once a family is gone.
        self._families = {
            "stage": F("freshrec_stage_latency_seconds", "Time spent per pipeline stage", F.HISTOGRAM),
            "lag": F("freshrec_freshness_lag_seconds", "Event timestamp to acknowledged ingest", F.HISTOGRAM),
            "index": F("freshrec_index_items", "Items in the instance's retrieval index", F.GAUGE),
            "recall": F("freshrec_index_recall", "recall@200 of the retrieval index against the exact scan, "
                        "self-checked on sampled queries at each build (1 when exact)", F.GAUGE),
            "added": F("freshrec_items_added_total", "Items written by upsert_items", F.COUNTER),
            "errors": F("freshrec_store_errors_total", "State store unavailable or failing", F.COUNTER),
            "fallbacks": F("freshrec_fallbacks_total", "Recommendations not from the personal path", F.COUNTER),
            "cancelled": F("freshrec_cancelled_total", "Requests dropped because the client gave up (deadline or cancel), "
                           "by the last stage done", F.COUNTER),
        }
        f = self._families
        self._stages = {s: f["stage"].Metric(labels={**labels, "stage": s}, buckets=LATENCY_BUCKETS) for s in STAGES}
        self._lag = f["lag"].Metric(labels=labels, buckets=LAG_BUCKETS)
        self._index = f["index"].Metric(labels=labels)
        self._labels = labels
        self._recall = None  # created by the first check: no series (rather than a 0) before it
        self._added = f["added"].Metric(labels=labels)
        self._errors = f["errors"].Metric(labels=labels)
        self._fallbacks = {k: f["fallbacks"].Metric(labels={**labels, "kind": k}) for k in ("popular", "query")}
        self._cancelled = {s: f["cancelled"].Metric(labels={**labels, "stage": s}) for s in CANCEL_STAGES}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._stages[name].observe(time.perf_counter() - t0)

    def index_size(self, n: int) -> None:
        self._index.set(n)

    def index_recall(self, recall: float) -> None:
        if self._recall is None:
            self._recall = self._families["recall"].Metric(labels=self._labels)
        self._recall.set(recall)

    def fallback(self, kind: str) -> None:
        self._fallbacks[kind].increment(1)

    def freshness_lag(self, seconds: float) -> None:
        self._lag.observe(max(0.0, seconds))

    def items_added(self, n: int) -> None:
        self._added.increment(n)

    def store_error(self) -> None:
        self._errors.increment(1)

    def cancelled(self, stage: str) -> None:
        self._cancelled[stage].increment(1)

    def model_card(self, version: int, card: dict | None) -> None:
        """The loaded version and what its card says (the newest load sets them: after a
        rollout or rollback they describe the version that serves)."""
        F, labels = self.pb.MetricFamily, self._labels
        gauge = lambda name, text: F(name, text, F.GAUGE)  # noqa: E731
        families = {
            "version": gauge("freshrec_model_version", "Model version this model last loaded"),
            "created": gauge("freshrec_model_created_timestamp_seconds", "When the loaded version was made (build or update)"),
            "cutoff": gauge("freshrec_model_data_cutoff_timestamp_seconds", "Newest event timestamp the loaded version learned from"),
            "seconds": gauge("freshrec_model_update_seconds", "Duration of the update that made the loaded version"),
            "gate": gauge("freshrec_model_gate_ndcg10", "The loaded version's gate: NDCG@10 of the candidate and its parent"),
        }
        self._families.update({f"card_{k}": f for k, f in families.items()})
        values = {"version": version}
        if card:
            values.update(created=card.get("created"), cutoff=card.get("data", {}).get("until"), seconds=card.get("seconds"))
        for key, value in values.items():
            if value is not None:
                metric = families[key].Metric(labels=labels)
                metric.set(float(value))
                self._card_metrics.append(metric)
        gate = (card or {}).get("gate", {})
        for which in ("candidate", "parent"):
            if which in gate:
                metric = families["gate"].Metric(labels={**labels, "version": which})
                metric.set(float(gate[which]["ndcg10"]))
                self._card_metrics.append(metric)

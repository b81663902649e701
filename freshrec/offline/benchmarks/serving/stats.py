"""What the server says of a run: Triton's own inference statistics (per model, before and after
each run) and freshrec's metrics on the metrics port (stage histograms, the index's recall)."""

from __future__ import annotations

from typing import Any, Iterator


def triton_stats(grpc_url: str) -> dict[str, dict[str, int]]:
    """Cumulative inference statistics of every model: counts and nanoseconds."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    out = {}
    for m in stats.get("model_stats", []):
        inf = m.get("inference_stats", {})

        def get(key: str, part: str) -> int:
            return int(inf.get(key, {}).get(part, 0))

        out[m["name"]] = {
            "requests": get("success", "count"),
            "executions": int(m.get("execution_count", 0)),
            "request_ns": get("success", "ns"),
            "queue_ns": get("queue", "ns"),
            "compute_input_ns": get("compute_input", "ns"),
            "compute_infer_ns": get("compute_infer", "ns"),
            "compute_output_ns": get("compute_output", "ns"),
            "failures": get("fail", "count"),
        }
    return out


def stats_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Per model that served requests in between: averages per request in milliseconds;
    overhead = request latency - queue - compute (Triton's own bookkeeping, gRPC excluded)."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        d = {k: a[k] - b.get(k, 0) for k in a}
        n = d["requests"]
        if n <= 0:
            continue
        compute = d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"]
        out[name] = {
            "requests": n,
            "executions": d["executions"],
            "avg_batch": round(n / d["executions"], 2) if d["executions"] else None,
            "request_ms": d["request_ns"] / n / 1e6,
            "queue_ms": d["queue_ns"] / n / 1e6,
            "compute_input_ms": d["compute_input_ns"] / n / 1e6,
            "compute_infer_ms": d["compute_infer_ns"] / n / 1e6,
            "compute_output_ms": d["compute_output_ns"] / n / 1e6,
            "overhead_ms": (d["request_ns"] - d["queue_ns"] - compute) / n / 1e6,
            "failures": d["failures"],
        }
        out[name]["queue_plus_overhead_ms"] = out[name]["queue_ms"] + out[name]["overhead_ms"]
    return out


def _samples(metrics_url: str, *names: str) -> Iterator[Any]:
    """The samples named `names` on the server's metrics port (Prometheus text format)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        yield from (sample for sample in family.samples if sample.name in names)


def stage_stats(metrics_url: str) -> dict[tuple[str, str], tuple[float, float]]:
    """freshrec's own stage histograms (server_ext/metrics.py) from the metrics port:
    (model, stage) -> (count, sum of seconds), cumulative."""
    out: dict[tuple[str, str], list[float]] = {}
    for sample in _samples(metrics_url, "freshrec_stage_latency_seconds_count", "freshrec_stage_latency_seconds_sum"):
        key = (sample.labels.get("model", ""), sample.labels.get("stage", ""))
        out.setdefault(key, [0.0, 0.0])[sample.name.endswith("_sum")] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def served_index_recall(metrics_url: str) -> float | None:
    """The `recommend` index's self-checked recall@200 (freshrec_index_recall), None if unset."""
    values = [x.value for x in _samples(metrics_url, "freshrec_index_recall") if x.labels.get("model") == "recommend"]
    return min(values) if values else None


def stage_delta(before: dict, after: dict) -> dict[str, dict[str, dict[str, float]]]:
    """model -> stage -> {"calls", "ms"}: the mean time of each pipeline stage per call in between."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (model, stage), (n, total) in after.items():
        n0, t0 = before.get((model, stage), (0.0, 0.0))
        if n - n0 > 0:
            out.setdefault(model, {})[stage] = {"calls": int(n - n0), "ms": (total - t0) / (n - n0) * 1e3}
    return out

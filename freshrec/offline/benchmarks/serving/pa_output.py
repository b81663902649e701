"""perf_analyzer's output read back: its `-f` CSV, its console report and its
`--profile-export-file` JSON."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import numpy as np


_CSV_KEYS = {
    "Concurrency": "concurrency",
    "Inferences/Second": "throughput",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_server_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
    "Client Recv": "client_recv_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
    "Avg latency": "avg_us",
    "request/response": "grpc_marshal_us",
    "response wait": "grpc_response_wait_us",
}


def parse_csv(text: str) -> list[dict[str, float]]:
    """perf_analyzer's `-f` CSV -> one dict per concurrency row (times in microseconds)."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, float] = {}
        for k, v in raw.items():
            if k is None or v in (None, ""):
                continue
            key = _CSV_KEYS.get(k.strip(), re.sub(r"[^a-z0-9]+", "_", k.strip().lower()).strip("_"))
            try:
                row[key] = float(v)
            except ValueError:
                continue
        if "concurrency" in row:
            row["concurrency"] = int(row["concurrency"])
            rows.append(row)
    if not rows:
        raise ValueError("perf_analyzer CSV has no result rows")
    return rows


_LAT_RE = re.compile(r"Avg request latency: (\d+) usec \((.*)\)")
_TERM_RE = re.compile(r"([a-z][a-z ]*?) (\d+) usec")


def _breakdown(line: str) -> dict[str, int] | None:
    m = _LAT_RE.search(line)
    if not m:
        return None
    out = {"request_us": int(m.group(1))}
    for name, value in _TERM_RE.findall(m.group(2)):
        out[name.strip().replace(" ", "_") + "_us"] = int(value)
    return out


def parse_stdout(text: str) -> dict[int, dict[str, Any]]:
    """perf_analyzer's console report -> concurrency -> {"client", "server", "composing"}.

    The "Server" line of a BLS model whose composing models are listed aggregates them (its
    "overhead" then holds the parent's own compute); the composing lines are per model."""
    results: dict[int, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    section, composing_name = None, None
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"Request concurrency: (\d+)$", s)
        if m:
            current = results.setdefault(int(m.group(1)), {"client": {}, "server": {}, "composing": {}})
            section, composing_name = None, None
            continue
        if current is None:
            continue
        if s == "Client:":
            section = "client"
        elif s == "Server:":
            section = "server"
        elif s == "Composing models:":
            section = "composing"
        elif section == "composing" and (m := re.match(r"(\S+), version: (\S*)$", s)):
            composing_name = m.group(1)
            current["composing"][composing_name] = {}
        elif section == "client":
            if m := re.match(r"Request count: (\d+)", s):
                current["client"]["requests"] = int(m.group(1))
            elif m := re.match(r"Throughput: ([\d.]+) infer/sec", s):
                current["client"]["throughput"] = float(m.group(1))
            elif m := re.match(r"(p\d+|Avg) latency: (\d+) usec", s):
                current["client"][f"{m.group(1).lower()}_us"] = int(m.group(2))
        elif section in ("server", "composing"):
            target = current["server"] if section == "server" else current["composing"].get(composing_name, {})
            if m := re.match(r"(Inference|Execution|Successful request) count: (\d+)", s):
                target[m.group(1).lower().replace(" ", "_") + "_count"] = int(m.group(2))
            elif (b := _breakdown(s)) is not None:
                target.update(b)
    return results


def parse_profile_export(text: str) -> dict[str, Any]:
    """perf_analyzer's `--profile-export-file` JSON -> throughput over the measured requests, and
    each request's (send, last response) wall-clock ns as "spans" (for `freshrec.offline.benchmarks.jitter.attribute`).

    perf_analyzer's own throughput divides by its measurement window, which with `--request-count`
    ends at its next one-second poll, not at the last response: short runs read low. Here it is
    completed requests / (last response - first request), from the per-request timestamps."""
    data = json.loads(text)
    sends, done, lat = [], [], []
    for exp in data.get("experiments", []):
        for r in exp.get("requests", []):
            if not r.get("response_timestamps"):
                continue
            sends.append(r["timestamp"])
            done.append(max(r["response_timestamps"]))
            lat.append((max(r["response_timestamps"]) - r["timestamp"]) / 1e6)
    if len(sends) < 2:
        raise ValueError("profile export holds fewer than two completed requests")
    span = (max(done) - min(sends)) / 1e9
    q = np.percentile(lat, [50, 90, 99])
    return {"requests": len(sends), "seconds": span, "throughput": len(sends) / span,
            "p50_ms": float(q[0]), "p90_ms": float(q[1]), "p99_ms": float(q[2]), "spans": list(zip(sends, done))}  # fmt: skip

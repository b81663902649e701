"""Real gRPC traffic for the fault suite: closed loops of `recommend` that record every outcome.

Each record is (start, latency_s, code) with code "OK" or the gRPC status name
("UNAVAILABLE", "DEADLINE_EXCEEDED", ...) and the server's message kept beside it, so a case
asserts exactly which requests failed and how.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
from tritonclient.utils import InferenceServerException


@dataclass(frozen=True)
class Outcome:
    start: float  # time.monotonic() when sent
    latency_s: float
    code: str  # "OK" or a gRPC status name
    message: str = ""

    @property
    def end(self) -> float:
        return self.start + self.latency_s


def recommend_inputs(user: str, k: int = 10) -> list[grpcclient.InferInput]:
    a = grpcclient.InferInput("user_id", [1], "BYTES")
    a.set_data_from_numpy(np.array([user.encode()], dtype=np.object_))
    b = grpcclient.InferInput("k", [1], "INT32")
    b.set_data_from_numpy(np.array([k], np.int32))
    return [a, b]


def classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, InferenceServerException):
        return (exc.status() or "NONE").rsplit(".", 1)[-1], exc.message() or ""
    return type(exc).__name__, str(exc)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(records: list[Outcome]) -> dict:
    ok = [r.latency_s * 1e3 for r in records if r.code == "OK"]
    return {"n": len(records), "codes": dict(Counter(r.code for r in records)),
            "ok_p50_ms": round(percentile(ok, 50), 1), "ok_p99_ms": round(percentile(ok, 99), 1)}  # fmt: skip


class Load:
    """``threads`` blocking loops of `recommend` over gRPC until stopped (a context manager).
    Raw tritonclient calls, or with ``retrying`` freshrec's own client (its retries of
    UNAVAILABLE with backoff): what a client following the protocol sees."""

    def __init__(self, url: str, users: list[str], threads: int = 4, deadline_s: float = 5.0, retrying: bool = False) -> None:
        self.url, self.users, self.deadline_s, self.retrying = url, users, deadline_s, retrying
        self.records: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i, threads), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, i: int, n: int) -> None:
        if self.retrying:
            from freshrec.client import FreshrecClient, FreshrecError

            client = FreshrecClient(self.url, timeout_s=self.deadline_s)
            call = lambda user: client.recommend(user, k=10)  # noqa: E731
        else:
            client = grpcclient.InferenceServerClient(self.url)
            call = lambda user: client.infer("recommend", recommend_inputs(user), client_timeout=self.deadline_s)  # noqa: E731
        j = i
        try:
            while not self._stop.is_set():
                user = self.users[j % len(self.users)]
                j += n
                t0 = time.monotonic()
                try:
                    call(user)
                    code, msg = "OK", ""
                except Exception as exc:  # noqa: BLE001 - recorded and asserted by the case
                    code, msg = (exc.code or "NONE", exc.message) if self.retrying and isinstance(exc, FreshrecError) else classify(exc)
                    if code in ("UNAVAILABLE", "NONE"):
                        time.sleep(0.01)  # a refused call comes back at once; do not spin
                with self._lock:
                    self.records.append(Outcome(t0, time.monotonic() - t0, code, msg))
        finally:
            client.close()

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [r for r in self.records if start <= r.start < end]


async def _closed_loop(client, users: list[str], i: int, n: int, stop_at: float, deadline_s: float | None,
                       backoff_s: float, out: list[Outcome]) -> None:  # fmt: skip
    j = i
    while time.monotonic() < stop_at:
        user = users[j % len(users)]
        j += n
        t0 = time.monotonic()
        try:
            await client.infer("recommend", recommend_inputs(user), client_timeout=deadline_s)
            code, msg = "OK", ""
        except Exception as exc:  # noqa: BLE001 - recorded
            code, msg = classify(exc)
        out.append(Outcome(t0, time.monotonic() - t0, code, msg))
        if code == "UNAVAILABLE" and backoff_s:  # a well-behaved client waits, with jitter, before the next try
            await asyncio.sleep(backoff_s * random.uniform(0.5, 1.5))


async def _burst(url: str, users: list[str], concurrency: int, duration_s: float, deadline_s: float | None, backoff_s: float,
                 probe_deadline_s: float | None) -> tuple[list[Outcome], list[Outcome]]:  # fmt: skip
    clients = [aiogrpc.InferenceServerClient(url) for _ in range(max(1, concurrency // 16))]
    probe_client = aiogrpc.InferenceServerClient(url)
    stop_at = time.monotonic() + duration_s
    main: list[Outcome] = []
    probe: list[Outcome] = []
    tasks = [_closed_loop(clients[i % len(clients)], users, i, concurrency, stop_at, deadline_s, backoff_s, main)
             for i in range(concurrency)]  # fmt: skip
    if probe_deadline_s is not None:
        tasks.append(_closed_loop(probe_client, users, 0, 1, stop_at, probe_deadline_s, backoff_s, probe))
    try:
        await asyncio.gather(*tasks)
    finally:
        for c in (*clients, probe_client):
            await c.close()
    return main, probe


def burst(url: str, users: list[str], concurrency: int, duration_s: float, *, deadline_s: float | None = 5.0,
          backoff_s: float = 0.02, probe_deadline_s: float | None = None) -> tuple[list[Outcome], list[Outcome]]:  # fmt: skip
    """``concurrency`` asyncio closed loops for ``duration_s`` (each backing off ``backoff_s`` ± 50%
    after an UNAVAILABLE), plus, with ``probe_deadline_s``, one well-behaved loop beside them.
    Returns (their outcomes, the probe's)."""
    return asyncio.run(_burst(url, users, concurrency, duration_s, deadline_s, backoff_s, probe_deadline_s))


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples matching `labels` on a live scrape."""
    from tests.server_ext.test_metrics import scrape, value

    return value(scrape(url), name, **labels)

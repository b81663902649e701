"""RELIABILITY 17 and issue 15 item 6: SIGTERM under load. The supervisor's drain (what `freshrec
serve` does on SIGTERM): readiness false at once, every request in flight finishes, and every
later request either is served or fails with a code clients retry elsewhere (UNAVAILABLE; before,
thousands got NOT_FOUND 'has no available versions', which clients treat as permanent)."""

from __future__ import annotations

import threading
import time

import pytest
from tritonclient.utils import InferenceServerException

from freshrec.client.errors import Unavailable, from_triton
from tests.faults.conftest import status
from tests.faults.traffic import Load


def client_error(code: str, message: str):
    return from_triton(InferenceServerException(message, status=f"StatusCode.{code}"))


def drain_under_load(sup, threads: int) -> None:
    with Load(sup.server.grpc_url, sup.users, threads=threads, deadline_s=10.0) as load:
        time.sleep(2.0)
        signalled = time.monotonic()
        # Readiness turns false the moment the drain starts (what the kubelet sees first).
        seen_unready: list[float] = []

        def watch() -> None:
            while time.monotonic() - signalled < 5 and not seen_unready:
                if status(f"{sup.health_url}/ready") != 200:
                    seen_unready.append(time.monotonic() - signalled)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        rc = sup.drain()
        stopped = time.monotonic()
        watcher.join()
        time.sleep(1.0)  # clients keep calling a server that is gone
    assert rc == 0 and not sup.server.is_alive()
    assert seen_unready and seen_unready[0] < 1.0
    assert stopped - signalled < sup.options.exit_timeout_s
    # In flight at the signal: every request being computed finishes. Above the queue's capacity
    # (the heavier case), requests still waiting in the queue may be refused by it instead
    # (UNAVAILABLE, retriable), as they are without a signal.
    in_flight = [r for r in load.records if r.start < signalled < r.end]
    queue_refusals = ("Exceeds maximum queue size", "Request timeout expired")
    computed = [r for r in in_flight if not any(q in r.message for q in queue_refusals)]
    assert all(r.code == "OK" for r in computed), [(r.code, r.message) for r in computed if r.code != "OK"]
    assert all(r.code == "UNAVAILABLE" for r in in_flight if r not in computed)
    if threads <= 8:  # within capacity (2 instances + 8 queued): nothing in flight is refused at all
        assert computed and computed == in_flight, [(r.code, r.message) for r in in_flight if r not in computed]
    later = [r for r in load.records if r.start >= signalled]
    failed = [r for r in later if r.code != "OK"]
    assert failed, "no request reached the server after it stopped"
    bad = [(r.code, r.message) for r in failed if not isinstance(client_error(r.code, r.message), Unavailable)]
    assert not bad, bad[:5]
    assert not [r for r in failed if r.code not in ("UNAVAILABLE", "NOT_FOUND")]


def test_sigterm_under_load_finishes_in_flight_and_refuses_the_rest_retriably(supervised) -> None:
    drain_under_load(supervised(), threads=8)


@pytest.mark.faults
@pytest.mark.parametrize("round_", range(3))
def test_sigterm_under_heavier_load(supervised, round_: int) -> None:
    """24 clients, above what the queue admits (2 instances + 8 queued): some are refused before
    and after the signal alike, always retriably."""
    drain_under_load(supervised(), threads=24)

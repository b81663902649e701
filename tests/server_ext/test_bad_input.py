"""RELIABILITY.md items 1-9 against the real server: each bad request gets a clear error with
the right code, and the server keeps serving."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.triton_calls import _input, ingest, recommend, upsert, users_of


def expect_error(fn, status="StatusCode.INVALID_ARGUMENT", match=""):
    with pytest.raises(InferenceServerException) as info:
        fn()
    assert info.value.status() == status, (info.value.status(), info.value.message())
    assert match.lower() in (info.value.message() or "").lower(), info.value.message()
    return info.value.message()


def raw(client, model, inputs):
    return lambda: client.infer(model, inputs)


def test_bad_requests_get_clear_errors_and_the_server_stays_up(served):
    c = grpcclient.InferenceServerClient(served.grpc_url)
    user = users_of(served.state_path, 1)[0]
    now = time.time()

    # 1. missing required input; unknown input; unknown output
    expect_error(raw(c, "recommend", [_input("k", [5], "INT32")]), match="user_id")
    expect_error(raw(c, "recommend", [_input("user_id", [user], "BYTES"), _input("nope", [1], "INT32")]), match="nope")
    expect_error(
        lambda: c.infer("recommend", [_input("user_id", [user], "BYTES")], outputs=[grpcclient.InferRequestedOutput("bogus")]),
        match="bogus",
    )
    # 2. shape / dtype mismatches; 3. zero and huge dims
    expect_error(raw(c, "recommend", [_input("user_id", [user], "BYTES"), _input("k", [1.5], "FP32")]), match="k")
    expect_error(raw(c, "recommend", [_input("user_id", [user, user], "BYTES")]))
    expect_error(raw(c, "recommend", [_input("user_id", [], "BYTES")]))
    # 5. string content
    expect_error(lambda: recommend(c, ""), match="empty")
    expect_error(lambda: recommend(c, "a\x00b"), match="NUL")
    expect_error(lambda: recommend(c, "x" * 1_000_000), match="longer")
    invalid_utf8 = grpcclient.InferInput("user_id", [1], "BYTES")
    invalid_utf8.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object))
    expect_error(raw(c, "recommend", [invalid_utf8]), match="UTF-8")
    expect_error(lambda: ingest(c, ["u", "u"], ["1"], [now, now]), match="elements")
    # 6. unknown user: cold start, not an error
    ids, scores = recommend(c, "someone-new", k=5)
    assert len(ids) == 5
    # 7. k out of range, NaN / far-future / pre-1970 timestamps, empty text
    expect_error(lambda: recommend(c, user, k=0), match="k must be")
    expect_error(lambda: recommend(c, user, k=-3), match="k must be")
    expect_error(lambda: recommend(c, user, k=100_000), match="k must be")
    expect_error(lambda: ingest(c, [user], ["1"], [float("nan")]), match="timestamp")
    expect_error(lambda: ingest(c, [user], ["1"], [now + 10 * 86400]), match="timestamp")
    expect_error(lambda: ingest(c, [user], ["1"], [-5.0]), match="timestamp")
    expect_error(lambda: ingest(c, [user], ["1"], [now], values=[float("inf")]), match="value")
    expect_error(lambda: ingest(c, [user], ["1"], [now], types=["teleport"]), match="unknown event_type 'teleport'; known types: view")
    assert ingest(c, [user], ["1"], [now], types=["rating"], values=[4.0]) == 1  # a common name of a built-in type (rate)
    expect_error(lambda: upsert(c, ["x"], ["   "]), match="empty")
    bad_meta = [_input("item_id", ["x"], "BYTES"), _input("text", ["t"], "BYTES"), _input("metadata", ["[1,2"], "BYTES")]
    expect_error(raw(c, "upsert_items", bad_meta), match="JSON")
    # k above the catalog size: a documented clamp, every item not seen or excluded comes back
    all_ids, _ = recommend(c, "someone-new", k=1000)
    assert len(all_ids) == len(set(all_ids)) <= 1000
    # 8. events for items that do not exist yet: stored, ignored until the item exists
    assert ingest(c, [user], ["item-from-the-future"], [now]) == 1
    assert "item-from-the-future" not in recommend(c, user, k=20)[0]
    assert upsert(c, ["item-from-the-future"], ["Arrives Late (2026). Genres: Drama"]) == 1
    assert "item-from-the-future" not in recommend(c, user, k=1000)[0]  # now known, and seen: excluded
    # 9. the same event twice by event_id: stored once
    assert ingest(c, [user], ["1"], [now], event_ids=["dup-1"]) == 1
    assert ingest(c, [user], ["1"], [now], event_ids=["dup-1"]) == 0

    # the server is still up and serving correct results
    assert c.is_server_live() and c.is_model_ready("recommend")
    assert len(recommend(c, user, k=10)[0]) == 10


# No path or stack trace in any error: tests/faults/test_internal_models.py runs every
# error-producing input of every model, the towers included.

"""freshrec.client: request building from the contract, error mapping, retries, CLI; and the real
gRPC path (unary, asyncio, streaming) against a real tritonserver serving stand-in models."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from freshrec.client import (
    AsyncFreshrecClient,
    Cancelled,
    DeadlineExceeded,
    EventIn,
    FreshrecClient,
    FreshrecError,
    InvalidArgument,
    ItemIn,
    NotFound,
    Recommendation,
    ServerError,
    StreamingRecommender,
    Unavailable,
    build_forget_inputs,
    build_ingest_inputs,
    build_inputs,
    build_recommend_inputs,
    build_upsert_inputs,
    from_grpc,
    from_stream_error,
    from_triton,
    to_infer_inputs,
)
from freshrec.client import cli
from freshrec.client.grpc_client import _stream_request
from freshrec.contract import FORGET_USER, INGEST_EVENTS, RECOMMEND, UPSERT_ITEMS, ModelContract
from freshrec.server_ext.launcher import find_free_ports

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _wire(contract: ModelContract, arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, list[int], list[Any]]]:
    """name -> (wire dtype, shape, decoded values) as they would travel."""
    out = {}
    for inp in to_infer_inputs(contract, arrays):
        raw = inp._get_content()  # the bytes tritonclient puts in raw_input_contents
        if inp.datatype() == "BYTES":
            values = [b.decode() for b in deserialize_bytes_tensor(raw)] if raw else []
        else:
            values = np.frombuffer(raw, dtype=contract.input(inp.name()).numpy_dtype).tolist()
        out[inp.name()] = (inp.datatype(), list(inp.shape()), values)
    return out


class _FakeResult:
    def __init__(self, **outputs: np.ndarray) -> None:
        self._outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self._outputs.get(name)


class _FakeTriton:
    """Stands in for tritonclient's InferenceServerClient: records calls, replays outcomes."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []

    def infer(self, model_name: str, inputs: list[Any], **kwargs: Any) -> Any:
        self.calls.append({"model": model_name, "inputs": {i.name(): i for i in inputs}, **kwargs})
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        pass


class _AsyncFakeTriton(_FakeTriton):
    async def infer(self, model_name: str, inputs: list[Any], **kwargs: Any) -> Any:  # type: ignore[override]
        return super().infer(model_name, inputs, **kwargs)

    async def close(self) -> None:  # type: ignore[override]
        pass


def _unavailable() -> InferenceServerException:
    return InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


def _accepted(n: int) -> _FakeResult:
    return _FakeResult(accepted=np.array([n], dtype=np.int64))


def _event_ids(call: dict[str, Any]) -> list[str]:
    return [b.decode() for b in deserialize_bytes_tensor(call["inputs"]["event_id"]._get_content())]


# --------------------------------------------------------------------------------------------
# Request building
# --------------------------------------------------------------------------------------------


def test_recommend_inputs_follow_the_contract() -> None:
    arrays = build_recommend_inputs("u1", k=5, query="sci-fi", exclude=["i1", "i2", "i3"], explain=True)
    assert list(arrays) == RECOMMEND.input_names  # all given, in contract order
    wire = _wire(RECOMMEND, arrays)
    for spec in RECOMMEND.inputs:
        assert wire[spec.name][0] == spec.wire_dtype
    # batched=False: no batch dimension; [1] scalars and an [n] list.
    assert wire["user_id"] == ("BYTES", [1], ["u1"])
    assert wire["k"] == ("INT32", [1], [5])
    assert wire["query"] == ("BYTES", [1], ["sci-fi"])
    assert wire["exclude_item_ids"] == ("BYTES", [3], ["i1", "i2", "i3"])
    assert wire["explain"] == ("BOOL", [1], [True])
    assert arrays["user_id"].dtype == np.object_ and isinstance(arrays["user_id"][0], bytes)


def test_optional_recommend_inputs_are_omitted_when_not_given() -> None:
    assert list(build_recommend_inputs("u1")) == ["user_id", "k"]  # k defaults to 10
    assert list(build_recommend_inputs("u1", k=None)) == ["user_id"]
    assert list(build_recommend_inputs("u1", k=None, exclude=[])) == ["user_id"]  # empty: not sent
    assert build_recommend_inputs("u1", exclude="only-one")["exclude_item_ids"].tolist() == [b"only-one"]


def test_strings_travel_as_utf8() -> None:
    arrays = build_recommend_inputs("ユーザー", query="café ☕")
    assert arrays["user_id"][0] == "ユーザー".encode()
    assert _wire(RECOMMEND, arrays)["query"][2] == ["café ☕"]
    with pytest.raises(InvalidArgument, match="UTF-8"):
        build_recommend_inputs("bad\ud800")  # a lone surrogate has no UTF-8 form
    with pytest.raises(InvalidArgument, match="string"):
        build_recommend_inputs(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [2**31, -(2**31) - 1, True, 2.5, "3"])
def test_k_must_be_an_int32(k: Any) -> None:
    with pytest.raises(InvalidArgument):
        build_recommend_inputs("u1", k=k)


def test_ingest_inputs_follow_the_contract() -> None:
    events = [EventIn("u1", "i1", "click", 1_700_000_000.25), EventIn("u2", "i2", "rate", 1_700_000_001.5, value=4.0)]
    wire = _wire(INGEST_EVENTS, build_ingest_inputs(events))
    assert list(wire) == INGEST_EVENTS.input_names
    for spec in INGEST_EVENTS.inputs:
        assert wire[spec.name][0] == spec.wire_dtype and wire[spec.name][1] == [2]
    assert wire["timestamp"][2] == [1_700_000_000.25, 1_700_000_001.5]  # FP64: no precision lost
    assert math.isnan(wire["value"][2][0]) and wire["value"][2][1] == 4.0  # None -> NaN
    assert wire["event_id"][2] == [e.event_id for e in events]

    without_values = build_ingest_inputs([EventIn("u1", "i1")])
    assert "value" not in without_values and "event_id" in without_values


def test_upsert_inputs_follow_the_contract() -> None:
    items = [ItemIn("i1", "A film", {"genre": "drama", "year": 1999}), ItemIn("i2", "Another")]
    wire = _wire(UPSERT_ITEMS, build_upsert_inputs(items))
    assert [(n, w[0], w[1]) for n, w in wire.items()] == [(s.name, s.wire_dtype, [2]) for s in UPSERT_ITEMS.inputs]
    assert [json.loads(m) for m in wire["metadata"][2]] == [{"genre": "drama", "year": 1999}, {}]
    assert "metadata" not in build_upsert_inputs([ItemIn("i3", "no metadata")])
    with pytest.raises(InvalidArgument, match="dict"):
        build_upsert_inputs([ItemIn("i4", "x", "not a dict")])  # type: ignore[arg-type]


def test_forget_inputs_follow_the_contract_and_the_call_is_retried() -> None:
    wire = _wire(FORGET_USER, build_forget_inputs("u1", "k3y"))
    assert wire == {"user_id": ("BYTES", [1], ["u1"]), "key": ("BYTES", [1], ["k3y"])}
    client = FreshrecClient("127.0.0.1:1", backoff_s=0.001)
    fake = client._triton = _FakeTriton(_unavailable(), _FakeResult(removed=np.array([7], dtype=np.int64)))  # type: ignore[assignment]
    assert client.forget_user("u1", "k3y") == 7  # idempotent on the server: retried like the writes
    assert [c["model"] for c in fake.calls] == ["forget_user"] * 2
    client._triton = fake = _FakeTriton(InferenceServerException("forget_user refused", status="StatusCode.INVALID_ARGUMENT"))  # type: ignore[assignment]
    with pytest.raises(InvalidArgument):
        client.forget_user("u1", "wrong")
    assert len(fake.calls) == 1


def test_build_inputs_rejects_what_the_contract_forbids() -> None:
    with pytest.raises(InvalidArgument, match="required"):
        build_inputs(RECOMMEND, {"k": [3]})
    with pytest.raises(InvalidArgument, match="no input"):
        build_inputs(RECOMMEND, {"user_id": ["u"], "INPUT0": [1]})
    with pytest.raises(InvalidArgument, match="shape"):
        build_inputs(RECOMMEND, {"user_id": ["u1", "u2"]})  # user_id is [1]
    with pytest.raises(InvalidArgument, match="out of range"):
        build_inputs(RECOMMEND, {"user_id": ["u"], "k": [2**40]})  # numpy alone would wrap it
    with pytest.raises(InvalidArgument, match="TYPE_FP64"):
        build_ingest_inputs([EventIn("u1", "i1", timestamp="yesterday")])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="shape"):
        build_inputs(INGEST_EVENTS, {n: [["x"]] for n in ("user_id", "item_id", "event_type")} | {"timestamp": [[1.0]]})


def test_stream_request_matches_the_unary_encoding() -> None:
    arrays = build_recommend_inputs("u1", k=3, exclude=["a"])
    request = _stream_request(RECOMMEND, arrays, "42")
    assert request.model_name == "recommend" and request.id == "42"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("user_id", "BYTES", [1]),
        ("k", "INT32", [1]),
        ("exclude_item_ids", "BYTES", [1]),
    ]
    assert list(request.raw_input_contents) == [i._get_content() for i in to_infer_inputs(RECOMMEND, arrays)]
    assert [o.name for o in request.outputs] == RECOMMEND.default_output_names == ["item_ids", "scores"]  # explanation only when asked for


# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        ("StatusCode.INVALID_ARGUMENT", InvalidArgument),
        ("StatusCode.OUT_OF_RANGE", InvalidArgument),
        ("StatusCode.UNAVAILABLE", Unavailable),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
        ("StatusCode.CANCELLED", Cancelled),
        ("StatusCode.NOT_FOUND", NotFound),
        ("StatusCode.INTERNAL", ServerError),
        ("StatusCode.UNKNOWN", ServerError),
        ("StatusCode.RESOURCE_EXHAUSTED", Unavailable),  # overload: retriable
        ("400", InvalidArgument),  # tritonclient.http puts the HTTP status there
        ("503", Unavailable),
        ("429", Unavailable),
        ("413", InvalidArgument),
    ],
)
def test_from_triton_maps_status(status: str, cls: type[FreshrecError]) -> None:
    err = from_triton(InferenceServerException("the server's words", status=status, debug_details="x"))
    assert type(err) is cls and isinstance(err, FreshrecError)
    assert err.message == "the server's words"
    assert err.code == status.removeprefix("StatusCode.")
    assert str(err) == f"[{err.code}] the server's words"


@pytest.mark.parametrize(
    ("status", "message", "cls"),
    [  # the texts Triton 2.51 and the chart's front proxy send (docs/reliability.md)
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", Unavailable),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", Unavailable),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'recommend' has no available versions", Unavailable),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found", NotFound),
        ("404", "Request for unknown model: 'recommend' has no available versions", Unavailable),
        ("StatusCode.RESOURCE_EXHAUSTED", "request larger than the proxy limit", InvalidArgument),
        ("StatusCode.RESOURCE_EXHAUSTED", "Received message larger than max (268435485 vs. 4194304)", InvalidArgument),
        ("StatusCode.RESOURCE_EXHAUSTED", "upstream overflow", Unavailable),
        ("500", "failed to parse the request JSON buffer: The document is empty. at 0", InvalidArgument),
        ("500", "Unable to parse 'inputs': attempt to access JSON non-object as object", InvalidArgument),
        ("500", "something else went wrong", ServerError),
    ],
)
def test_from_triton_maps_transient_and_permanent_texts(status: str, message: str, cls: type[FreshrecError]) -> None:
    err = from_triton(InferenceServerException(message, status=status))
    assert type(err) is cls and err.code == status.removeprefix("StatusCode.")


def test_from_triton_without_status_is_a_plain_client_error() -> None:
    err = from_triton(InferenceServerException("got unexpected numpy array shape [2], expected [1]"))
    assert type(err) is FreshrecError and err.code is None and str(err).startswith("got unexpected")


def test_from_grpc_maps_rpc_errors() -> None:
    class _Rpc(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.DEADLINE_EXCEEDED

        def details(self) -> str:
            return "Deadline Exceeded"

    err = from_grpc(_Rpc())
    assert type(err) is DeadlineExceeded and err.code == "DEADLINE_EXCEEDED"


@pytest.mark.parametrize(
    ("message", "cls"),
    [  # the texts Triton 2.51 sent on a stream (no status travels with them)
        ("Request for unknown model: 'nope' is not found", NotFound),
        ("[request id: 3] inference input 'user_id' data-type is 'INT32', but model 'recommend' expects 'BYTES'", InvalidArgument),
        ("unexpected inference input 'zzz' for model 'recommend'", InvalidArgument),
        ("Failed to process the request(s) for model 'recommend_0_1', message: RuntimeError: boom", ServerError),
        ("user_id must not be empty", ServerError),  # a model's INVALID_ARG: indistinguishable here
        ("[INVALID_ARGUMENT] user_id must not be empty", InvalidArgument),  # explicit code prefix
        ("[StatusCode.UNAVAILABLE] state store down", Unavailable),
        ("Request for unknown model: 'recommend' has no available versions", Unavailable),  # draining
        ("Exceeds maximum queue size", Unavailable),
    ],
)
def test_from_stream_error(message: str, cls: type[FreshrecError]) -> None:
    err = from_stream_error(message)
    assert type(err) is cls
    assert not err.message.startswith("[StatusCode") and not err.message.startswith("[INVALID")


# --------------------------------------------------------------------------------------------
# Event ids and retries
# --------------------------------------------------------------------------------------------


def test_event_id_and_timestamp_are_fixed_at_creation() -> None:
    before = time.time()
    a, b = EventIn("u1", "i1"), EventIn("u1", "i1")
    assert re.fullmatch(r"[0-9a-f]{32}", a.event_id or "") and a.event_id != b.event_id
    assert before <= (a.timestamp or 0) <= time.time()
    assert build_ingest_inputs([a])["event_id"].tolist() == build_ingest_inputs([a])["event_id"].tolist()
    assert EventIn("u1", "i1", event_id="mine").event_id == "mine"
    assert EventIn("u1", "i1", event_id="").event_id != ""


def test_ingest_retries_unavailable_with_the_same_event_ids() -> None:
    client = FreshrecClient("127.0.0.1:1", backoff_s=0.001)
    fake = client._triton = _FakeTriton(_unavailable(), _unavailable(), _accepted(2))  # type: ignore[assignment]
    assert client.ingest([EventIn("u1", "i1"), EventIn("u2", "i2")]) == 2
    assert len(fake.calls) == 3
    ids = [_event_ids(c) for c in fake.calls]
    assert ids[0] == ids[1] == ids[2] and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[0])
    assert all(c["client_timeout"] == 2.0 for c in fake.calls)  # each attempt has the deadline


def test_retries_are_bounded_and_only_for_unavailable() -> None:
    client = FreshrecClient("127.0.0.1:1", timeout_s=0.5, max_retries=2, backoff_s=0.001)
    client._triton = fake = _FakeTriton(_unavailable())  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        client.upsert_items([ItemIn("i1", "text")])
    assert len(fake.calls) == 3  # first try + max_retries

    for status, cls in [("StatusCode.INVALID_ARGUMENT", InvalidArgument), ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded)]:
        client._triton = fake = _FakeTriton(InferenceServerException("no", status=status))  # type: ignore[assignment]
        with pytest.raises(cls):
            client.ingest([EventIn("u1", "i1")])
        assert len(fake.calls) == 1

    # recommend only reads: it is retried too (a full queue refuses at once, a moment later it admits)
    client._triton = fake = _FakeTriton(_unavailable())  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        client.recommend("u1")
    assert len(fake.calls) == 3
    full = InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
    client._triton = fake = _FakeTriton(full, _FakeResult(item_ids=np.array([b"a"], dtype=object), scores=np.array([1.0], np.float32)))  # type: ignore[assignment]
    assert client.recommend("u1").item_ids == ["a"] and len(fake.calls) == 2


def test_backoff_is_jittered_and_capped() -> None:
    client = FreshrecClient("127.0.0.1:1", backoff_s=0.1, max_backoff_s=0.3)
    waits = [client._retry.delay(attempt) for attempt in range(6) for _ in range(50)]
    assert all(0.05 <= w <= 0.3 for w in waits)
    assert len({round(w, 6) for w in waits[:50]}) > 10  # jitter: retrying clients do not move in lockstep
    assert max(waits[-50:]) <= 0.3 and min(waits[-50:]) >= 0.15  # capped, still jittered


def test_recommend_parses_outputs_and_passes_the_deadline() -> None:
    client = FreshrecClient("127.0.0.1:1", timeout_s=2.0)
    result = _FakeResult(item_ids=np.array([b"a", "é".encode()], dtype=object), scores=np.array([0.9, 0.1], dtype=np.float32))
    client._triton = fake = _FakeTriton(result)  # type: ignore[assignment]
    rec = client.recommend("u1", k=2, timeout_s=0.25)
    assert isinstance(rec, Recommendation) and rec.item_ids == ["a", "é"]
    assert rec.scores == pytest.approx([0.9, 0.1]) and rec.latency_ms >= 0
    assert fake.calls[0]["client_timeout"] == 0.25 and fake.calls[0]["model"] == "recommend"
    assert fake.calls[0]["timeout"] == 250_000  # the deadline, for the server's queue policy (microseconds)
    assert [o.name() for o in fake.calls[0]["outputs"]] == ["item_ids", "scores"]  # the explanation only when asked for
    explained = _FakeResult(item_ids=np.array([b"a"], dtype=object), scores=np.array([0.9], dtype=np.float32),
                            explanation=np.array([b'{"user": {"topics": []}, "items": []}'], dtype=object))  # fmt: skip
    client._triton = fake = _FakeTriton(explained)  # type: ignore[assignment]
    assert client.recommend("u1", explain=True).explanation == {"user": {"topics": []}, "items": []}
    assert [o.name() for o in fake.calls[0]["outputs"]] == ["item_ids", "scores", "explanation"]

    client._triton = _FakeTriton(_FakeResult(item_ids=np.array([b"a"], dtype=object)))  # type: ignore[assignment]
    with pytest.raises(ServerError, match="scores"):
        client.recommend("u1")


def test_async_client_retries_with_the_same_event_ids() -> None:
    async def scenario() -> tuple[int, _AsyncFakeTriton]:
        async with AsyncFreshrecClient("127.0.0.1:1", backoff_s=0.001) as client:
            client._triton = fake = _AsyncFakeTriton(_unavailable(), _accepted(1))  # type: ignore[assignment]
            return await client.ingest([EventIn("u1", "i1")]), fake

    accepted, fake = asyncio.run(scenario())
    assert accepted == 1 and len(fake.calls) == 2 and _event_ids(fake.calls[0]) == _event_ids(fake.calls[1])


def test_no_server_is_unavailable() -> None:
    """Real gRPC, nothing listening: UNAVAILABLE, retried for ingest, never a hang."""
    (port,) = find_free_ports(1)
    url = f"127.0.0.1:{port}"
    with FreshrecClient(url, timeout_s=5, backoff_s=0.001) as client:
        start = time.monotonic()
        with pytest.raises(Unavailable) as info:
            client.recommend("u1")
        assert info.value.code == "UNAVAILABLE"
        with pytest.raises(Unavailable):
            client.ingest([EventIn("u1", "i1")])
        assert not client.ready()
        assert time.monotonic() - start < 5

    async def aio() -> None:
        async with AsyncFreshrecClient(url, timeout_s=5) as client:
            with pytest.raises(Unavailable):
                await client.recommend("u1")
            assert not await client.ready()

    asyncio.run(aio())

    with StreamingRecommender(url) as stream:
        with pytest.raises(Unavailable):
            stream.submit("u1").result(timeout=5)
        with pytest.raises(Unavailable):  # the stream is dead: later submits fail at once
            stream.submit("u2").result(timeout=1)
        local = stream.submit("u3", k=2**40)  # local validation errors arrive on the future too
        assert isinstance(local.exception(timeout=1), InvalidArgument)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freshrec")
    cli.add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_parses_client_commands(tmp_path: Path) -> None:
    ns = _parser().parse_args(["recommend", "u1", "-k", "5", "--query", "space", "--exclude", "a", "b", "--exclude", "c", "--url", "h:9", "--json"])
    assert (ns.user_id, ns.k, ns.query, ns.exclude, ns.url, ns.json) == ("u1", 5, "space", ["a", "b", "c"], "h:9", True)
    assert callable(ns.func)
    ns = _parser().parse_args(["recommend", "u1"])
    assert (ns.k, ns.query, ns.exclude, ns.url, ns.timeout, ns.json) == (10, None, [], "127.0.0.1:8001", 2.0, False)

    ns = _parser().parse_args(["ingest", "u1", "i1", "--type", "rate", "--value", "4.5", "--timestamp", "1700000000", "--event-id", "e1"])
    assert (ns.user_id, ns.item_id, ns.event_type, ns.value, ns.timestamp, ns.event_id) == ("u1", "i1", "rate", 4.5, "1700000000", "e1")
    ns = _parser().parse_args(["ingest", "--file", str(tmp_path / "e.csv")])
    assert ns.user_id is None and ns.file == tmp_path / "e.csv" and ns.event_type == "click"

    ns = _parser().parse_args(["add-item", "i1", "A film", "--metadata", '{"year": 1999}'])
    assert (ns.item_id, ns.text, ns.metadata) == ("i1", "A film", '{"year": 1999}')
    assert _parser().parse_args(["add-item", "--file", "items.csv"]).file == Path("items.csv")
    with pytest.raises(SystemExit):
        _parser().parse_args(["recommend", "u1", "-k", "many"])


class _CliClient:
    """Replaces FreshrecClient inside the CLI: records calls, returns or raises ``outcome``."""

    calls: list[tuple[str, Any]] = []
    outcome: Any = None

    def __init__(self, url: str, timeout_s: float) -> None:
        self.calls.append(("init", (url, timeout_s)))

    def __enter__(self) -> _CliClient:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def _answer(self, name: str, arg: Any) -> Any:
        self.calls.append((name, arg))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome if self.outcome is not None else len(arg)

    def recommend(self, user_id: str, **kw: Any) -> Any:
        return self._answer("recommend", (user_id, kw))

    def ingest(self, events: list[EventIn]) -> int:
        return self._answer("ingest", list(events))

    def upsert_items(self, items: list[ItemIn]) -> int:
        return self._answer("upsert", list(items))

    def forget_user(self, user_id: str, key: str) -> int:
        return self._answer("forget", (user_id, key))


@pytest.fixture
def cli_client(monkeypatch: pytest.MonkeyPatch) -> type[_CliClient]:
    _CliClient.calls, _CliClient.outcome = [], None
    monkeypatch.setattr(cli, "FreshrecClient", _CliClient)
    return _CliClient


def _run(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    return ns.func(ns)


def test_cli_recommend_prints_table_or_json(cli_client: type[_CliClient], capsys: pytest.CaptureFixture[str]) -> None:
    cli_client.outcome = Recommendation(["a", "b"], [0.5, 0.25], 3.0)
    assert _run(["recommend", "u1", "-k", "2", "--exclude", "x", "--timeout", "0.5"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"rank\s+item_id\s+score\n1\s+a\s+0\.5000\n2\s+b\s+0\.2500", out) and "latency:" in out
    assert cli_client.calls[0] == ("init", ("127.0.0.1:8001", 0.5))
    assert cli_client.calls[1] == ("recommend", ("u1", {"k": 2, "query": None, "exclude": ["x"], "explain": False}))

    assert _run(["recommend", "u1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["items"] == [{"item_id": "a", "score": 0.5}, {"item_id": "b", "score": 0.25}]
    assert doc["latency_ms"] >= 0 and "_table" not in doc


def test_cli_forget_takes_its_key_from_a_file_or_the_environment(cli_client: type[_CliClient], capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("FRESHREC_FORGET_KEY", raising=False)
    monkeypatch.delenv("FRESHREC_ADMIN_KEY", raising=False)
    assert _run(["forget", "u1"]) == 2 and "--key-file" in capsys.readouterr().err  # no key anywhere: refused locally
    cli_client.outcome = 4
    (tmp_path / "admin.key").write_text("filekey\n")
    assert _run(["forget", "u1", "--key-file", str(tmp_path / "admin.key"), "--json"]) == 0
    assert cli_client.calls[-1] == ("forget", ("u1", "filekey")) and json.loads(capsys.readouterr().out)["removed"] == 4
    monkeypatch.setenv("FRESHREC_ADMIN_KEY", "adminkey")
    assert _run(["forget", "u1"]) == 0 and cli_client.calls[-1] == ("forget", ("u1", "adminkey"))
    monkeypatch.setenv("FRESHREC_FORGET_KEY", "forgetkey")
    assert _run(["forget", "u1"]) == 0 and cli_client.calls[-1] == ("forget", ("u1", "forgetkey"))
    out = capsys.readouterr().out
    assert "events removed" in out and "forgetkey" not in out


@pytest.mark.parametrize(
    ("exc", "code"),
    [(InvalidArgument("user_id must not be empty", "INVALID_ARGUMENT"), 2), (Unavailable("down", "UNAVAILABLE"), 3), (ServerError("boom", "INTERNAL"), 1), (DeadlineExceeded("late", "DEADLINE_EXCEEDED"), 1)],
)
def test_cli_exit_codes(cli_client: type[_CliClient], capsys: pytest.CaptureFixture[str], exc: FreshrecError, code: int) -> None:
    cli_client.outcome = exc
    assert _run(["recommend", "u1"]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {exc}\n" and "Traceback" not in captured.err


def test_cli_ingest_single_and_file(cli_client: type[_CliClient], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _run(["ingest", "u1", "i1", "--type", "rate", "--value", "4", "--timestamp", "2024-01-01T00:00:00", "--event-id", "e1"]) == 0
    (event,) = cli_client.calls[-1][1]
    assert event == EventIn("u1", "i1", "rate", 1704067200.0, 4.0, "e1")  # naive ISO time = UTC
    assert "event_id: e1" in capsys.readouterr().out

    csv_path = tmp_path / "events.csv"
    csv_path.write_text(
        "user_id,item_id,event_type,timestamp,value,event_id\n"
        "u1,i1,click,1700000000,,e-1\n"
        "u2,i2,,1700000001.5,3.5,\n"
        "u3,i3,view,,,\n"
    )
    assert _run(["ingest", "--file", str(csv_path), "--json"]) == 0
    e1, e2, e3 = cli_client.calls[-1][1]
    assert (e1.event_id, e1.value, e2.event_type, e2.value, e3.event_type) == ("e-1", None, "click", 3.5, "view")
    doc = json.loads(capsys.readouterr().out)
    assert doc["sent"] == doc["accepted"] == 3 and doc["event_ids"][0] == "e-1"
    # A timestamped row without event_id gets the same id on every run; an untimed one cannot.
    assert _run(["ingest", "--file", str(csv_path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["event_ids"]
    assert again[:2] == doc["event_ids"][:2] and again[2] != doc["event_ids"][2]

    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\nu1,i1\n")
    assert _run(["ingest", "--file", str(bad)]) == 2
    assert "missing column" in capsys.readouterr().err
    assert _run(["ingest", "u1"]) == 2  # item_id missing
    assert _run(["ingest", "u1", "i1", "--timestamp", "yesterday"]) == 2
    assert _run(["ingest", "--file", str(tmp_path / "absent.csv")]) == 1
    assert "absent.csv" in capsys.readouterr().err


def test_cli_add_item(cli_client: type[_CliClient], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _run(["add-item", "i1", "A quiet film", "--metadata", '{"year": 1999}']) == 0
    assert cli_client.calls[-1][1] == [ItemIn("i1", "A quiet film", {"year": 1999})]
    assert "latency:" in capsys.readouterr().out
    assert _run(["add-item", "i1", "x", "--metadata", "[1, 2]"]) == 2
    assert "JSON object" in capsys.readouterr().err

    items = tmp_path / "items.csv"
    items.write_text('item_id,text,metadata\ni1,First,"{""a"": 1}"\ni2,Second,\n')
    assert _run(["add-item", "--file", str(items)]) == 0
    assert cli_client.calls[-1][1] == [ItemIn("i1", "First", {"a": 1}), ItemIn("i2", "Second", None)]


# --------------------------------------------------------------------------------------------
# Real server: stand-in models
# --------------------------------------------------------------------------------------------
# These stand-ins exist ONLY to test the client adapter against real Triton gRPC behaviour
# (encoding, status codes, deadlines, streams). They are not the recommender: the real
# `recommend` / `ingest_events` models are built by the exporter. Their configs are written by
# hand here on purpose, and checked against the contract by test_stand_in_configs_match_contract.

RECOMMEND_CONFIG = """\
name: "recommend"
backend: "python"
max_batch_size: 0
input [
  { name: "user_id" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "k" data_type: TYPE_INT32 dims: [ 1 ] optional: true },
  { name: "query" data_type: TYPE_STRING dims: [ 1 ] optional: true },
  { name: "exclude_item_ids" data_type: TYPE_STRING dims: [ -1 ] optional: true },
  { name: "explain" data_type: TYPE_BOOL dims: [ 1 ] optional: true }
]
output [
  { name: "item_ids" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "scores" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "explanation" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU count: 2 } ]
"""

INGEST_CONFIG = """\
name: "ingest_events"
backend: "python"
max_batch_size: 0
input [
  { name: "user_id" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "item_id" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "event_type" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "timestamp" data_type: TYPE_FP64 dims: [ -1 ] },
  { name: "value" data_type: TYPE_FP32 dims: [ -1 ] optional: true },
  { name: "event_id" data_type: TYPE_STRING dims: [ -1 ] optional: true }
]
output [ { name: "accepted" data_type: TYPE_INT64 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

_STAND_IN_COMMON = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def invalid(msg):
    # pb_utils.TritonError is only there once the stub runs (not at import); INVALID_ARG exists
    # on 2.51, the plain constructor (INTERNAL) is the fallback for versions without codes.
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(msg) if code is None else pb_utils.TritonError(msg, code)


def get(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()
'''

RECOMMEND_PY = _STAND_IN_COMMON + '''

class TritonPythonModel:
    """Stand-in: item_ids "a", "b", ... [:k] minus exclusions; query "sleep:S" sleeps S seconds."""

    def execute(self, requests):
        responses = []
        for request in requests:
            user = get(request, "user_id").reshape(-1)[0].decode("utf-8")
            if not user:
                responses.append(pb_utils.InferenceResponse(error=invalid("user_id must not be empty")))
                continue
            k = get(request, "k")
            k = 10 if k is None else int(k.reshape(-1)[0])
            query = get(request, "query")
            query = "" if query is None else query.reshape(-1)[0].decode("utf-8")
            exclude = get(request, "exclude_item_ids")
            exclude = set() if exclude is None else {b.decode("utf-8") for b in exclude.reshape(-1)}
            if query.startswith("sleep:"):
                time.sleep(float(query[len("sleep:"):]))
            items = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in exclude][:k]
            outputs = [
                pb_utils.Tensor("item_ids", np.array([i.encode("utf-8") for i in items], dtype=np.object_)),
                pb_utils.Tensor("scores", np.arange(len(items), 0, -1).astype(np.float32)),
            ]
            explain = get(request, "explain")
            if explain is not None and bool(explain.reshape(-1)[0]):  # computed only when asked for
                outputs.append(pb_utils.Tensor("explanation", np.array([b'{"items": []}'], dtype=np.object_)))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
'''

INGEST_PY = _STAND_IN_COMMON + '''

class TritonPythonModel:
    """Stand-in: remembers event ids in memory; accepted = ids not seen before."""

    def initialize(self, args):
        self.seen = set()

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = get(request, "event_id")
            ts = get(request, "timestamp")
            value = get(request, "value")
            if ids is None or ts.dtype != np.float64 or (value is not None and value.dtype != np.float32):
                responses.append(pb_utils.InferenceResponse(error=invalid("bad event tensors")))
                continue
            new = {i for i in ids.reshape(-1).tolist()} - self.seen
            self.seen |= new
            accepted = pb_utils.Tensor("accepted", np.array([len(new)], dtype=np.int64))
            responses.append(pb_utils.InferenceResponse(output_tensors=[accepted]))
        return responses
'''


def _config_tensors(config: str, section: str) -> list[tuple[str, str, bool]]:
    block = re.search(rf"^{section} \[(.*?)\]$", config, re.S | re.M)
    assert block, section
    return [
        (m.group(1), m.group(2), "optional: true" in m.group(0))
        for m in re.finditer(r'\{ name: "(\w+)" data_type: (TYPE_\w+) dims: \[[^\]]*\][^}]*\}', block.group(1))
    ]


@pytest.mark.parametrize(("contract", "config"), [(RECOMMEND, RECOMMEND_CONFIG), (INGEST_EVENTS, INGEST_CONFIG)])
def test_stand_in_configs_match_contract(contract: ModelContract, config: str) -> None:
    assert _config_tensors(config, "input") == [(t.name, t.dtype, t.optional) for t in contract.inputs]
    assert _config_tensors(config, "output") == [(t.name, t.dtype, False) for t in contract.outputs]  # outputs carry no flag


def _stand_in_repository(root: Path, recommend_config: str = RECOMMEND_CONFIG) -> Path:
    for name, config, model in (("recommend", recommend_config, RECOMMEND_PY), ("ingest_events", INGEST_CONFIG, INGEST_PY)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(textwrap.dedent(model))
    return root


def _raises(cls: type[FreshrecError], fn: Callable[[], Any]) -> FreshrecError:
    with pytest.raises(cls) as info:
        fn()
    return info.value


def test_clients_against_real_triton(tmp_path: Path, triton_server_factory: Callable[..., Any]) -> None:
    server = triton_server_factory(_stand_in_repository(tmp_path / "repo"), exit_timeout_s=5)
    url = server.grpc_url

    # -- blocking ---------------------------------------------------------------------------
    with FreshrecClient(url, timeout_s=5) as client:
        assert client.ready() and client.ready(["recommend", "ingest_events"])
        assert not client.ready(["upsert_items"])
        rec = client.recommend("u1", k=3)
        assert rec.item_ids == ["a", "b", "c"] and rec.scores == [3.0, 2.0, 1.0] and rec.latency_ms > 0
        assert rec.explanation is None and client.recommend("u1", k=3, explain=True).explanation == {"items": []}
        assert len(client.recommend("ü-user", k=None).item_ids) == 10  # k omitted: server default
        assert client.recommend("u1", k=3, exclude=["a", "c"], query="anything").item_ids == ["b", "d", "e"]

        err = _raises(InvalidArgument, lambda: client.recommend(""))
        assert (err.code, err.message) == ("INVALID_ARGUMENT", "user_id must not be empty")
        err = _raises(NotFound, lambda: client.upsert_items([ItemIn("i1", "text")]))  # not deployed here
        assert err.code == "NOT_FOUND" and "upsert_items" in err.message

        events = [EventIn("u1", "a", value=5.0), EventIn("u1", "b")]
        assert client.ingest(events) == 2
        assert client.ingest(events) == 0  # same objects, same ids: stored once

    # -- asyncio ----------------------------------------------------------------------------
    async def aio() -> None:
        async with AsyncFreshrecClient(url, timeout_s=5) as client:
            assert await client.ready(["recommend"])
            recs = await asyncio.gather(*(client.recommend(f"u{i}", k=i) for i in range(1, 6)))
            assert [len(r.item_ids) for r in recs] == [1, 2, 3, 4, 5]
            assert (await _araises(InvalidArgument, client.recommend(""))).code == "INVALID_ARGUMENT"
            assert await client.ingest([EventIn("u9", "z")]) == 1

    asyncio.run(aio())

    # -- streaming --------------------------------------------------------------------------
    with StreamingRecommender(url, stream_timeout=30) as stream:
        slow = stream.submit("slow", k=7, query="sleep:0.5")
        fast = [stream.submit(f"u{i}", k=i % 5 + 1) for i in range(20)]
        bad = stream.submit("")
        tail = stream.submit("u-last", k=2, exclude=["a"])
        for i, fut in enumerate(fast):
            assert len(fut.result(timeout=10).item_ids) == i % 5 + 1  # matched by request id
        assert tail.result(timeout=10).item_ids == ["b", "c"]
        err = bad.exception(timeout=10)
        # Streams carry no status per request: the model's INVALID_ARG arrives as text only.
        assert type(err) is ServerError and err.code is None and err.message == "user_id must not be empty"
        assert slow.result(timeout=10).item_ids == list("abcdefg")
        # Seen on 2.51: for a non-decoupled model the stream returns responses in request order,
        # so the fast requests (run in parallel on the second instance) arrive after the slow
        # one. Matching is by request id all the same, so a server that reorders is fine too.
        assert stream.pending == 0

    # -- deadlines (last: the model keeps sleeping after the client gave up, RELIABILITY 13) ---
    with FreshrecClient(url, timeout_s=5) as client:
        start = time.monotonic()
        err = _raises(DeadlineExceeded, lambda: client.recommend("u1", query="sleep:1.0", timeout_s=0.3))
        assert err.code == "DEADLINE_EXCEEDED" and time.monotonic() - start < 0.9

    async def aio_deadline() -> None:
        async with AsyncFreshrecClient(url, timeout_s=0.3) as client:
            assert (await _araises(DeadlineExceeded, client.recommend("u1", query="sleep:1.0"))).code == "DEADLINE_EXCEEDED"

    asyncio.run(aio_deadline())

    with StreamingRecommender(url, stream_timeout=0.5) as stream:
        late = stream.submit("u1", query="sleep:1.0")
        assert isinstance(late.exception(timeout=10), DeadlineExceeded)
        assert isinstance(stream.submit("u1").exception(timeout=1), DeadlineExceeded)

    stream = StreamingRecommender(url)
    inflight: Future[Recommendation] = stream.submit("u1", query="sleep:1.0")
    time.sleep(0.1)
    stream.close(cancel=True)
    assert isinstance(inflight.exception(timeout=5), Cancelled)
    assert isinstance(stream.submit("u1").exception(timeout=1), Cancelled)


def test_stream_sends_refused_requests_again(tmp_path: Path, triton_server_factory: Callable[..., Any]) -> None:
    """One instance and a queue of one, as a loaded server sheds: a burst behind a slow request
    is refused ("Exceeds maximum queue size", Unavailable). Without retries the refusals reach the
    caller; with them each refused request is sent again after its backoff and answered, and
    close() waits for those re-sends."""
    config = RECOMMEND_CONFIG.replace(
        "instance_group [ { kind: KIND_CPU count: 2 } ]",
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        "dynamic_batching { default_queue_policy { max_queue_size: 1 timeout_action: REJECT } }",
    )
    assert config != RECOMMEND_CONFIG
    server = triton_server_factory(_stand_in_repository(tmp_path / "repo", config), exit_timeout_s=5)

    def burst(stream: StreamingRecommender) -> list[Future[Recommendation]]:
        return [stream.submit("slow", k=3, query="sleep:0.5")] + [stream.submit(f"u{i}", k=i + 1) for i in range(4)]

    with StreamingRecommender(server.grpc_url, stream_timeout=30, max_retries=0) as stream:
        errors = [f.exception(timeout=10) for f in burst(stream)]
    refused = [e for e in errors if e is not None]
    assert errors[0] is None and len(refused) >= 2, errors  # one runs, at most one waits
    assert all(isinstance(e, Unavailable) and "queue" in e.message for e in refused), refused

    with StreamingRecommender(server.grpc_url, stream_timeout=30, max_retries=6, backoff_s=0.2) as stream:
        futures = burst(stream)
    # close() (the with's exit) returned after every re-send was answered
    assert all(f.done() for f in futures) and stream.pending == 0
    assert [f.result().item_ids for f in futures] == [list("abc")] + [list("abcd")[: i + 1] for i in range(4)]
    assert max(f.result().latency_ms for f in futures[1:]) > 400  # counted from the first submit, past the slow one


async def _araises(cls: type[FreshrecError], coro: Any) -> FreshrecError:
    with pytest.raises(cls) as info:
        await coro
    return info.value

"""gRPC clients for the served pipeline models: ``recommend``, ``ingest_events``, ``upsert_items``,
``forget_user``.

Every request is built from ``freshrec.contract`` (input names, TYPE_* dtypes, dims, which inputs
are optional); nothing here repeats a tensor name or dtype by hand. The pipeline models are not
batched (``batched=False``), so tensors carry no batch dimension: ``recommend`` takes ``user_id``
[1], ``k`` [1], ``query`` [1], ``exclude_item_ids`` [n]; ``ingest_events`` and ``upsert_items``
take one [n] tensor per field; ``forget_user`` takes ``user_id`` [1] and ``key`` [1].

Three clients share the request building and response parsing below:

* ``FreshrecClient``: blocking, over ``tritonclient.grpc.InferenceServerClient``.
* ``AsyncFreshrecClient``: the same API as coroutines, over ``tritonclient.grpc.aio``.
* ``StreamingRecommender``: many ``recommend`` calls on one bidirectional ``ModelStreamInfer``
  stream, each answered through a ``concurrent.futures.Future``.

Deadlines: every unary call has ``client_timeout`` (default 2 s), and sends the same deadline as
Triton's per-request ``timeout``, so a request still queued when its client gives up is refused
by the server's queue policy instead of computed for nobody. Retries: only on ``Unavailable``
(server down, queue full, a model version swapping, a dependency down), at most ``max_retries``
times with jittered exponential backoff: a refused request comes back at once, and clients that
re-send at once only keep the queue full. That is safe for every call: ``recommend`` only reads,
every event carries an ``event_id`` fixed when the ``EventIn`` is created (the server stores an id
once), an upsert is idempotent by item id and forgetting a user twice removes nothing more.
``InvalidArgument`` is never retried.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import itertools
import json
import math
import queue
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from freshrec.client.errors import (
    Cancelled,
    FreshrecError,
    InvalidArgument,
    ServerError,
    Unavailable,
    from_grpc,
    from_stream_error,
    from_triton,
)
from freshrec.contract import FORGET_USER, INGEST_EVENTS, RECOMMEND, UPSERT_ITEMS, ModelContract

__all__ = [
    "DEFAULT_URL",
    "AsyncFreshrecClient",
    "EventIn",
    "FreshrecClient",
    "ItemIn",
    "Recommendation",
    "StreamingRecommender",
    "build_ingest_inputs",
    "build_inputs",
    "build_recommend_inputs",
    "build_upsert_inputs",
    "to_infer_inputs",
]

DEFAULT_URL = "127.0.0.1:8001"
_INT32 = np.iinfo(np.int32)

# --------------------------------------------------------------------------------------------
# Domain types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]  # best first
    scores: list[float]  # same order as item_ids
    latency_ms: float  # client-side round trip of the call that produced it
    # With explain=True: the user's top interest topics and, per item, the topic it shares most
    # with the user and the history item carrying it (README, Interest profiles and explanations).
    explanation: dict | None = None


@dataclass(frozen=True)
class EventIn:
    """One interaction. A missing ``event_id`` (uuid4 hex) and ``timestamp`` (now, unix seconds)
    are fixed when the object is created, so sending the same objects again, by the client's own
    retry or by the caller's, is stored once by the server.
    """

    user_id: str
    item_id: str
    event_type: str = "click"
    timestamp: float | None = None  # unix seconds (a datetime is converted); None = now
    value: float | None = None  # e.g. a rating; None travels as NaN
    event_id: str | None = None  # idempotency key; None = a fresh uuid4 hex

    def __post_init__(self) -> None:
        if not self.event_id:
            object.__setattr__(self, "event_id", uuid.uuid4().hex)
        if self.timestamp is None:
            object.__setattr__(self, "timestamp", time.time())
        elif isinstance(self.timestamp, _dt.datetime):
            object.__setattr__(self, "timestamp", self.timestamp.timestamp())


@dataclass(frozen=True)
class ItemIn:
    item_id: str
    text: str  # what the text encoder embeds
    metadata: dict[str, Any] | None = field(default=None, hash=False)  # sent as one JSON object


# --------------------------------------------------------------------------------------------
# Request building (pure: contract + values -> numpy arrays -> tritonclient inputs)
# --------------------------------------------------------------------------------------------


def _utf8(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidArgument(f"{what} is not encodable as UTF-8: {exc.reason}") from None


def _expected_dims(contract: ModelContract, dims: tuple[int | str, ...]) -> list[int]:
    """Dims as the server sees them: symbolic sizes and -1 are wildcards (-1)."""
    fixed = [d if isinstance(d, int) else -1 for d in dims]
    return ([-1] if contract.batched else []) + fixed


def _check_integers(contract: ModelContract, name: str, dtype: type, value: Any) -> None:
    """numpy 1.26 silently wraps out-of-range ints on conversion; refuse instead."""
    raw = np.asarray(value)
    if raw.size == 0:
        return
    if raw.dtype.kind not in "iu":
        raise InvalidArgument(f"{contract.name}: input {name!r} must hold integers, got {raw.dtype}")
    info = np.iinfo(dtype)
    if raw.min() < info.min or raw.max() > info.max:
        raise InvalidArgument(f"{contract.name}: input {name!r} is out of range for {np.dtype(dtype).name}")


def build_inputs(contract: ModelContract, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Arrays for ``contract``'s inputs, in contract order, with the contract's numpy dtypes.

    ``values`` maps input names to array-likes (strings: str or bytes, sent as UTF-8 bytes in an
    object array). A value of None omits an optional input; a missing required input, an unknown
    name or a shape that contradicts the contract's fixed dims raises ``InvalidArgument``.
    """
    unknown = set(values) - set(contract.input_names)
    if unknown:
        raise InvalidArgument(f"{contract.name} has no input(s) {sorted(unknown)}; it takes {contract.input_names}")
    arrays: dict[str, np.ndarray] = {}
    for spec in contract.inputs:
        value = values.get(spec.name)
        if value is None:
            if spec.optional:
                continue
            raise InvalidArgument(f"{contract.name}: input {spec.name!r} is required")
        if spec.dtype == "TYPE_STRING":
            raw = np.asarray(value, dtype=np.object_)
            arr = np.empty(raw.shape, dtype=np.object_)
            for idx, v in np.ndenumerate(raw):
                arr[idx] = _utf8(v, spec.name)
        else:
            if np.issubdtype(spec.numpy_dtype, np.integer):
                _check_integers(contract, spec.name, spec.numpy_dtype, value)
            try:
                arr = np.asarray(value, dtype=spec.numpy_dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidArgument(f"{contract.name}: input {spec.name!r} is not {spec.dtype}: {exc}") from None
        want = _expected_dims(contract, spec.dims)
        if arr.ndim != len(want) or any(w not in (-1, s) for w, s in zip(want, arr.shape)):
            raise InvalidArgument(f"{contract.name}: input {spec.name!r} has shape {list(arr.shape)}, contract says {want}")
        arrays[spec.name] = arr
    return arrays


def build_recommend_inputs(
    user_id: str, k: int | None = 10, query: str | None = None, exclude: Iterable[str] | None = None, explain: bool = False
) -> dict[str, np.ndarray]:
    """``recommend`` inputs; ``k``/``query`` None and an empty ``exclude`` are not sent."""
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise InvalidArgument(f"k must be an integer, got {type(k).__name__}")
        if not _INT32.min <= int(k) <= _INT32.max:
            raise InvalidArgument(f"k={k} does not fit the contract's INT32")
    if isinstance(exclude, (str, bytes)):  # one id, not its characters
        exclude = [exclude]
    excluded = list(exclude) if exclude is not None else []
    return build_inputs(
        RECOMMEND,
        {
            "user_id": [user_id],
            "k": None if k is None else [int(k)],
            "query": None if query is None else [query],
            "exclude_item_ids": excluded or None,
            "explain": [True] if explain else None,
        },
    )


def build_ingest_inputs(events: Sequence[EventIn]) -> dict[str, np.ndarray]:
    """``ingest_events`` inputs, one [n] tensor per field. ``value`` is sent only when some event
    has one (the others get NaN); ``event_id`` always (EventIn always has one)."""
    values = [e.value for e in events]
    return build_inputs(
        INGEST_EVENTS,
        {
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "event_type": [e.event_type for e in events],
            "timestamp": [e.timestamp for e in events],
            "value": [math.nan if v is None else v for v in values] if any(v is not None for v in values) else None,
            "event_id": [e.event_id for e in events],
        },
    )


def build_upsert_inputs(items: Sequence[ItemIn]) -> dict[str, np.ndarray]:
    """``upsert_items`` inputs; ``metadata`` (one JSON object per item, ``{}`` where absent) is
    sent only when some item has metadata."""
    for item in items:
        if item.metadata is not None and not isinstance(item.metadata, Mapping):
            raise InvalidArgument(f"metadata of item {item.item_id!r} must be a dict, got {type(item.metadata).__name__}")
    has_meta = any(item.metadata is not None for item in items)
    return build_inputs(
        UPSERT_ITEMS,
        {
            "item_id": [i.item_id for i in items],
            "text": [i.text for i in items],
            "metadata": [json.dumps(i.metadata or {}, ensure_ascii=False, sort_keys=True) for i in items] if has_meta else None,
        },
    )


def build_forget_inputs(user_id: str, key: str) -> dict[str, np.ndarray]:
    """``forget_user`` inputs: the user and the server's forget key."""
    return build_inputs(FORGET_USER, {"user_id": [user_id], "key": [key]})


def to_infer_inputs(contract: ModelContract, arrays: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """``InferInput`` objects (shared by the sync and aio clients) with the contract's wire dtypes."""
    inputs = []
    for name, arr in arrays.items():
        inp = grpcclient.InferInput(name, list(arr.shape), contract.input(name).wire_dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def _requested_outputs(contract: ModelContract, extra: Sequence[str] = ()) -> list[grpcclient.InferRequestedOutput]:
    # Asking by name makes a server that lacks a contract output fail loudly, not return less; an
    # optional output (recommend's explanation) is computed only when named, so only `extra` ones are.
    return [grpcclient.InferRequestedOutput(name) for name in [*contract.default_output_names, *extra]]


def _stream_request(contract: ModelContract, arrays: Mapping[str, np.ndarray], request_id: str) -> service_pb2.ModelInferRequest:
    """The protobuf ``to_infer_inputs`` + ``infer`` would build, for the raw stream."""
    request = service_pb2.ModelInferRequest(model_name=contract.name, id=request_id)
    for name, arr in arrays.items():
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = contract.input(name).wire_dtype
        tensor.shape.extend(arr.shape)
        if arr.dtype == np.object_:
            packed = serialize_byte_tensor(arr)
            request.raw_input_contents.append(packed.item() if packed.size else b"")
        else:
            request.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    for name in contract.default_output_names:
        request.outputs.add().name = name
    return request


# --------------------------------------------------------------------------------------------
# Response parsing
# --------------------------------------------------------------------------------------------


def _output(result: grpcclient.InferResult, contract: ModelContract, name: str) -> np.ndarray:
    arr = result.as_numpy(name)
    if arr is None:
        raise ServerError(f"{contract.name} response has no output {name!r}")
    return arr


def parse_recommendation(result: grpcclient.InferResult, latency_ms: float, explain: bool = False) -> Recommendation:
    raw_ids = _output(result, RECOMMEND, "item_ids").reshape(-1)
    scores = _output(result, RECOMMEND, "scores").reshape(-1)
    if len(raw_ids) != len(scores):
        raise ServerError(f"recommend returned {len(raw_ids)} item_ids but {len(scores)} scores")
    try:
        ids = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in raw_ids]
    except UnicodeDecodeError as exc:
        raise ServerError(f"recommend returned an item id that is not UTF-8: {exc}") from None
    explanation = None
    if explain:
        raw = _output(result, RECOMMEND, "explanation").reshape(-1)
        try:
            explanation = json.loads(raw[0])
        except (IndexError, ValueError) as exc:
            raise ServerError(f"recommend returned an explanation that is not JSON: {exc}") from None
    return Recommendation(item_ids=ids, scores=[float(s) for s in scores], latency_ms=latency_ms, explanation=explanation)


def parse_removed(result: grpcclient.InferResult) -> int:
    removed = _output(result, FORGET_USER, "removed").reshape(-1)
    if removed.size != 1:
        raise ServerError(f"forget_user returned {removed.size} values for 'removed', expected 1")
    return int(removed[0])


def parse_accepted(result: grpcclient.InferResult, contract: ModelContract) -> int:
    accepted = _output(result, contract, "accepted").reshape(-1)
    if accepted.size != 1:
        raise ServerError(f"{contract.name} returned {accepted.size} values for 'accepted', expected 1")
    return int(accepted[0])


# --------------------------------------------------------------------------------------------
# Retry policy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Retry:
    max_retries: int = 3  # extra attempts after the first, only on Unavailable
    backoff_s: float = 0.05  # first wait; doubles per attempt
    max_backoff_s: float = 1.0  # cap on one wait

    def delay(self, attempt: int) -> float:
        # Jitter in [0.5, 1) of the exponential step keeps retrying clients from moving in lockstep.
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


def _queue_timeout_us(timeout_s: float | None) -> int | None:
    """The deadline as Triton's per-request ``timeout`` (microseconds; the queue policy refuses
    a request still queued after it). None without a deadline."""
    return None if timeout_s is None else max(1, int(timeout_s * 1e6))


def _metadata(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    return dict(headers) if headers else None


# --------------------------------------------------------------------------------------------
# Blocking client
# --------------------------------------------------------------------------------------------


class FreshrecClient:
    """Blocking client. Thread-safe for concurrent calls (tritonclient's unary calls are).

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        timeout_s: deadline of each call (each attempt of a retried call); None = no deadline.
        max_retries: retries of a call on ``Unavailable``.
        backoff_s / max_backoff_s: first and largest wait between those retries.
        headers: gRPC metadata sent with every call (e.g. an auth header).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout_s: float | None = 2.0,
        *,
        max_retries: int = 3,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        headers: Mapping[str, str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._retry = _Retry(max_retries, backoff_s, max_backoff_s)
        self._headers = _metadata(headers)
        self._triton = grpcclient.InferenceServerClient(url, verbose=verbose)

    # -- API --------------------------------------------------------------------------------
    def recommend(
        self,
        user_id: str,
        k: int | None = 10,
        query: str | None = None,
        exclude: Iterable[str] | None = None,
        timeout_s: float | None = None,
        explain: bool = False,
    ) -> Recommendation:
        """``explain=True`` asks for the topic explanation too (``Recommendation.explanation``);
        without it the server computes none."""
        arrays = build_recommend_inputs(user_id, k, query, exclude, explain)
        start = time.perf_counter()
        result = self._infer(RECOMMEND, arrays, timeout_s, retry=True, extra=("explanation",) if explain else ())
        return parse_recommendation(result, (time.perf_counter() - start) * 1e3, explain)

    def ingest(self, events: Sequence[EventIn], timeout_s: float | None = None) -> int:
        """Store events; returns how many were new (a replayed event_id counts 0)."""
        if not events:
            return 0
        result = self._infer(INGEST_EVENTS, build_ingest_inputs(events), timeout_s, retry=True)
        return parse_accepted(result, INGEST_EVENTS)

    def upsert_items(self, items: Sequence[ItemIn], timeout_s: float | None = None) -> int:
        """Insert or update items by id; returns how many the server accepted."""
        if not items:
            return 0
        result = self._infer(UPSERT_ITEMS, build_upsert_inputs(items), timeout_s, retry=True)
        return parse_accepted(result, UPSERT_ITEMS)

    def forget_user(self, user_id: str, key: str, timeout_s: float | None = None) -> int:
        """Remove every event of a user from the store (durable when this returns); returns how
        many events went (0 when none were left). ``key``: the server's forget key (a wrong one
        is ``InvalidArgument``)."""
        result = self._infer(FORGET_USER, build_forget_inputs(user_id, key), timeout_s, retry=True)
        return parse_removed(result)

    def ready(self, models: Iterable[str] = ()) -> bool:
        """Server ready (the launcher runs Triton with strict readiness: all models loaded) and
        each of ``models`` ready. Any failure, including no server, is False."""
        try:
            kw = {"headers": self._headers, "client_timeout": self.timeout_s}
            return bool(self._triton.is_server_ready(**kw)) and all(self._triton.is_model_ready(m, **kw) for m in models)
        except InferenceServerException:
            return False

    def close(self) -> None:
        self._triton.close()

    def __enter__(self) -> FreshrecClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------
    def _infer(self, contract: ModelContract, arrays: Mapping[str, np.ndarray], timeout_s: float | None, *, retry: bool,
               extra: Sequence[str] = ()) -> grpcclient.InferResult:  # fmt: skip
        inputs = to_infer_inputs(contract, arrays)
        outputs = _requested_outputs(contract, extra)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        for attempt in itertools.count():
            try:
                return self._triton.infer(contract.name, inputs, outputs=outputs, client_timeout=timeout,
                                          timeout=_queue_timeout_us(timeout), headers=self._headers)  # fmt: skip
            except InferenceServerException as exc:
                err = from_triton(exc)
                if not (retry and isinstance(err, Unavailable) and attempt < self._retry.max_retries):
                    raise err from exc
            time.sleep(self._retry.delay(attempt))
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# asyncio client
# --------------------------------------------------------------------------------------------


class AsyncFreshrecClient:
    """``FreshrecClient``'s API as coroutines over ``tritonclient.grpc.aio``.

    The channel is created on first use, inside the running event loop; use one instance per loop.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout_s: float | None = 2.0,
        *,
        max_retries: int = 3,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        headers: Mapping[str, str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._retry = _Retry(max_retries, backoff_s, max_backoff_s)
        self._headers = _metadata(headers)
        self._verbose = verbose
        self._triton: aiogrpcclient.InferenceServerClient | None = None

    @property
    def _client(self) -> aiogrpcclient.InferenceServerClient:
        if self._triton is None:
            self._triton = aiogrpcclient.InferenceServerClient(self.url, verbose=self._verbose)
        return self._triton

    async def recommend(
        self,
        user_id: str,
        k: int | None = 10,
        query: str | None = None,
        exclude: Iterable[str] | None = None,
        timeout_s: float | None = None,
        explain: bool = False,
    ) -> Recommendation:
        """``explain=True`` asks for the topic explanation too (``Recommendation.explanation``);
        without it the server computes none."""
        arrays = build_recommend_inputs(user_id, k, query, exclude, explain)
        start = time.perf_counter()
        result = await self._infer(RECOMMEND, arrays, timeout_s, retry=True, extra=("explanation",) if explain else ())
        return parse_recommendation(result, (time.perf_counter() - start) * 1e3, explain)

    async def ingest(self, events: Sequence[EventIn], timeout_s: float | None = None) -> int:
        if not events:
            return 0
        result = await self._infer(INGEST_EVENTS, build_ingest_inputs(events), timeout_s, retry=True)
        return parse_accepted(result, INGEST_EVENTS)

    async def upsert_items(self, items: Sequence[ItemIn], timeout_s: float | None = None) -> int:
        if not items:
            return 0
        result = await self._infer(UPSERT_ITEMS, build_upsert_inputs(items), timeout_s, retry=True)
        return parse_accepted(result, UPSERT_ITEMS)

    async def forget_user(self, user_id: str, key: str, timeout_s: float | None = None) -> int:
        result = await self._infer(FORGET_USER, build_forget_inputs(user_id, key), timeout_s, retry=True)
        return parse_removed(result)

    async def ready(self, models: Iterable[str] = ()) -> bool:
        try:
            kw = {"headers": self._headers, "client_timeout": self.timeout_s}
            if not await self._client.is_server_ready(**kw):
                return False
            for model in models:
                if not await self._client.is_model_ready(model, **kw):
                    return False
            return True
        except InferenceServerException:
            return False

    async def close(self) -> None:
        if self._triton is not None:
            await self._triton.close()
            self._triton = None

    async def __aenter__(self) -> AsyncFreshrecClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _infer(self, contract: ModelContract, arrays: Mapping[str, np.ndarray], timeout_s: float | None, *, retry: bool,
               extra: Sequence[str] = ()) -> grpcclient.InferResult:  # fmt: skip
        inputs = to_infer_inputs(contract, arrays)
        outputs = _requested_outputs(contract, extra)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        for attempt in itertools.count():
            try:
                return await self._client.infer(contract.name, inputs, outputs=outputs, client_timeout=timeout,
                                                timeout=_queue_timeout_us(timeout), headers=self._headers)  # fmt: skip
            except InferenceServerException as exc:
                err = from_triton(exc)
                if not (retry and isinstance(err, Unavailable) and attempt < self._retry.max_retries):
                    raise err from exc
            await asyncio.sleep(self._retry.delay(attempt))
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Streaming recommend
# --------------------------------------------------------------------------------------------

_END = object()  # request-queue sentinel: half-close the stream
_CHANNEL_OPTIONS = [  # tritonclient's own defaults for its channels
    ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
]


class StreamingRecommender:
    """Many ``recommend`` requests on one bidirectional ``ModelStreamInfer`` stream.

    ``submit`` returns at once with a ``Future[Recommendation]``; responses arrive in completion
    order and are matched to futures by the request id each request carries. A request refused
    with ``Unavailable`` (a full queue, a queue timeout, a store down) is sent again on the same
    stream, like the unary clients' retries: at most ``max_retries`` times, after a jittered
    exponential backoff, under a new request id; its latency counts from the first ``submit``.
    Any other failed request fails only its own future, with the mapped exception
    (``errors.from_stream_error``: streams carry no status code per request). A failed stream
    (``stream_timeout`` expired -> ``DeadlineExceeded``, server gone -> ``Unavailable``,
    ``close(cancel=True)`` -> ``Cancelled``) fails every pending future, retries waiting out
    their backoff included, and every later ``submit``.

    Why not ``InferenceServerClient.start_stream`` + ``async_stream_infer``: tritonclient 2.73
    hands the stream callback ``result=None`` and an error without the response's id for a
    failed request, so with several requests in flight an error cannot be matched to its
    request. Triton does put the id on error responses; reading the generated gRPC stub
    directly keeps it. Requests are the same protobufs tritonclient builds.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        stream_timeout: deadline of the whole stream in seconds; None = until ``close``.
        max_retries: re-sends of a request refused with ``Unavailable``.
        backoff_s / max_backoff_s: first and largest wait before a re-send.
        headers: gRPC metadata for the stream.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        stream_timeout: float | None = None,
        *,
        max_retries: int = 3,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self._retry = _Retry(max_retries, backoff_s, max_backoff_s)
        self._channel = grpc.insecure_channel(url, options=_CHANNEL_OPTIONS)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._requests: queue.Queue[object] = queue.Queue()
        self._pending: dict[str, _Pending] = {}  # by request id, sent or waiting to be re-sent
        self._unsent: set[str] = set()  # ids of re-sends still waiting out their backoff
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._failure: FreshrecError | None = None  # set once no new submit is taken
        self._ended = False  # the end marker is queued: nothing more goes on the stream
        self._call = stub.ModelStreamInfer(
            self._request_iter(), metadata=list((headers or {}).items()) or None, timeout=stream_timeout
        )
        self._reader = threading.Thread(target=self._read, name="freshrec-stream-reader", daemon=True)
        self._reader.start()

    def submit(
        self, user_id: str, k: int | None = 10, query: str | None = None, exclude: Iterable[str] | None = None
    ) -> Future[Recommendation]:
        """Queue one ``recommend``; every error, local ones included, arrives on the future."""
        future: Future[Recommendation] = Future()
        try:
            arrays = build_recommend_inputs(user_id, k, query, exclude)
        except FreshrecError as exc:
            future.set_exception(exc)
            return future
        with self._lock:
            if self._failure is not None:
                future.set_exception(self._failure)
                return future
            request_id = str(next(self._ids))
            request = _stream_request(RECOMMEND, arrays, request_id)
            self._pending[request_id] = _Pending(future, time.perf_counter(), request)
            # Enqueued under the lock, so close() cannot slip its end marker in before it.
            self._requests.put(request)
        return future

    @property
    def pending(self) -> int:
        """Requests not answered yet, re-sends waiting out their backoff included."""
        with self._lock:
            return len(self._pending)

    def close(self, cancel: bool = False, timeout: float | None = None) -> None:
        """End the stream. By default waits (at most ``timeout`` s) for pending responses,
        re-sends included; with ``cancel=True``, or when the wait times out, cancels the stream
        and fails the rest."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._failure is None:
                self._failure = Cancelled("stream closed")
            if not cancel:  # answers still to come may be refusals to send again: keep it open
                self._lock.wait_for(lambda: not self._pending or self._ended, timeout)
            self._end_locked()
        if cancel:
            self._call.cancel()
        self._reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._reader.is_alive():
            self._call.cancel()
            self._reader.join()
        self._fail_pending(Cancelled("stream closed before a response arrived"))
        self._channel.close()

    def __enter__(self) -> StreamingRecommender:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------
    def _request_iter(self) -> Iterator[service_pb2.ModelInferRequest]:
        while (item := self._requests.get()) is not _END:
            yield item  # type: ignore[misc]

    def _end_locked(self) -> None:
        if not self._ended:
            self._ended = True
            self._requests.put(_END)
            self._lock.notify_all()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._deliver(response)
            err: FreshrecError = Cancelled("stream ended")  # after close(): nothing is pending
        except grpc.RpcError as exc:
            err = from_grpc(exc)
        with self._lock:
            if self._failure is None:
                self._failure = err
            self._end_locked()  # lets gRPC's request-consuming thread finish
        self._fail_pending(err)

    def _deliver(self, response: service_pb2.ModelStreamInferResponse) -> None:
        request_id = response.infer_response.id
        error = from_stream_error(response.error_message) if response.error_message else None
        with self._lock:
            entry = self._pending.pop(request_id, None)
            if entry is None and error is not None and len(self._pending) - len(self._unsent) == 1:
                # An error without a known id (none seen on 2.51) can only be the one in flight.
                entry = self._pending.pop(next(i for i in self._pending if i not in self._unsent))
            if entry is None:
                return  # a response for nothing we wait on
            if isinstance(error, Unavailable) and entry.attempt < self._retry.max_retries and not self._ended:
                self._schedule_resend_locked(entry)
                return
            self._lock.notify_all()  # close() may be waiting for the last answer
        future = entry.future
        if not future.set_running_or_notify_cancel():
            return  # the caller cancelled the future
        try:
            if error is not None:
                raise error
            result = grpcclient.InferResult(response.infer_response)
            future.set_result(parse_recommendation(result, (time.perf_counter() - entry.start) * 1e3))
        except FreshrecError as exc:
            future.set_exception(exc)
        except Exception as exc:  # a malformed response must not kill the reader thread
            future.set_exception(ServerError(f"unreadable recommend response: {exc!r}"))

    def _schedule_resend_locked(self, entry: _Pending) -> None:
        request = service_pb2.ModelInferRequest()
        request.CopyFrom(entry.request)
        request.id = request_id = str(next(self._ids))
        self._pending[request_id] = _Pending(entry.future, entry.start, request, entry.attempt + 1)
        self._unsent.add(request_id)
        timer = threading.Timer(self._retry.delay(entry.attempt), self._resend, (request_id,))
        timer.daemon = True
        timer.start()

    def _resend(self, request_id: str) -> None:
        with self._lock:
            self._unsent.discard(request_id)
            entry = self._pending.get(request_id)
            if entry is not None and not self._ended:
                self._requests.put(entry.request)
            self._lock.notify_all()

    def _fail_pending(self, err: FreshrecError) -> None:
        with self._lock:
            entries = list(self._pending.values())
            self._pending.clear()
            self._unsent.clear()
            self._lock.notify_all()
        for entry in entries:
            if entry.future.set_running_or_notify_cancel():
                entry.future.set_exception(err)


@dataclass
class _Pending:
    """One ``recommend`` on the stream: its future, when it was first submitted, the request as
    sent (kept for a re-send) and how many re-sends came before."""

    future: Future[Recommendation]
    start: float
    request: service_pb2.ModelInferRequest
    attempt: int = 0

"""RELIABILITY 1-5, 18, 20 and issue 15 items 4 and 8, with the BLS engine (the towers loaded and
called by the pipeline, as on the NGC flavour): every error-producing input of every model gets
INVALID_ARGUMENT with a message free of paths and stack traces, and a client hammering a tower
with hostile requests never fails another client's recommend (before: 17.7% of them failed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from freshrec.config import ModelConfig
from freshrec.contract import BY_NAME, ONNX_MODELS, Sizes
from tests.faults.traffic import Load
from tests.triton_calls import _input

LEAKS = ("/", "Traceback", "At:", "onnxruntime", "ONNXRuntime", ".py", "node_")
Inputs = list[grpcclient.InferInput]


def tensor(name: str, array: np.ndarray) -> grpcclient.InferInput:
    dtype = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}[array.dtype]
    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def valid_arrays(model: str, sizes: Sizes, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs a tower accepts: every dim at its configured size, plausible values."""
    out = {}
    for spec in BY_NAME[model].inputs:
        shape = (batch, *sizes.resolve(spec))
        if spec.numpy_dtype is np.bool_:
            out[spec.name] = np.ones(shape, bool)
        elif spec.values is not None:
            out[spec.name] = np.full(shape, 1, np.int64)
        else:
            x = np.ones(shape, np.float32)
            out[spec.name] = x / np.sqrt(shape[-1]) if spec.name.endswith(("vectors", "embedding")) else x
    return out


def tower_cases(model: str, sizes: Sizes) -> dict[str, Inputs]:
    """Hostile requests to one tower: oversized dynamic dims, indices out of range, NaN/Inf,
    inputs that disagree, a missing input, a wrong dtype, a batch above max_batch_size."""
    contract = BY_NAME[model]
    base = valid_arrays(model, sizes)
    cases: dict[str, dict[str, np.ndarray]] = {}
    for spec in contract.inputs:
        for i, dim in enumerate(spec.dims):
            if dim in ("L", "C", "T"):
                grown = {n: a for n, a in base.items()}
                for other in contract.inputs:  # grow the dim in every input that has it, so only the bound is wrong
                    if dim in other.dims:
                        shape = list(grown[other.name].shape)
                        shape[1 + list(other.dims).index(dim)] = 5000
                        grown[other.name] = np.resize(grown[other.name], shape)
                cases[f"{dim} too large"] = grown
        if spec.values is not None:
            cases[f"{spec.name} out of range"] = {**base, spec.name: base[spec.name] * 10**9}
            cases[f"{spec.name} negative"] = {**base, spec.name: -base[spec.name]}
        elif spec.numpy_dtype is np.float32:
            cases[f"{spec.name} NaN"] = {**base, spec.name: np.full_like(base[spec.name], np.nan)}
    first = contract.inputs[0].name
    cases["batch sizes disagree"] = {**base, first: np.concatenate([base[first]] * 2)}
    if any("L" in s.dims for s in contract.inputs):
        mask = "history_mask"
        cases["L disagrees across inputs"] = {**base, mask: base[mask][:, :-1]}
    out = {name: [tensor(n, a) for n, a in arrays.items()] for name, arrays in cases.items()}
    out["missing input"] = [tensor(n, a) for n, a in list(base.items())[1:]]
    wrong = {n: (a.astype(np.float32) if a.dtype == np.int64 else a) for n, a in base.items()}
    if any(a.dtype == np.int64 for a in base.values()):
        out["wrong dtype"] = [tensor(n, a) for n, a in wrong.items()]
    out["batch above max_batch_size"] = [tensor(n, a) for n, a in valid_arrays(model, sizes, batch=65).items()]
    return out


def public_cases(user: str) -> dict[str, tuple[str, Inputs]]:
    now = time.time()
    ev = lambda **kw: [_input("user_id", kw.get("users", [user]), "BYTES"), _input("item_id", kw.get("items", ["1"]), "BYTES"),  # noqa: E731
                       _input("event_type", kw.get("types", ["click"]), "BYTES"), _input("timestamp", kw.get("ts", [now]), "FP64")] + kw.get("extra", [])
    rec = lambda *extra, uid=user: [_input("user_id", [uid], "BYTES"), *extra]  # noqa: E731
    bad_utf8 = grpcclient.InferInput("user_id", [1], "BYTES")
    bad_utf8.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object))
    return {
        "recommend: missing user_id": ("recommend", [_input("k", [5], "INT32")]),
        "recommend: unknown input": ("recommend", rec(_input("nope", [1], "INT32"))),
        "recommend: wrong dtype": ("recommend", rec(_input("k", [1.5], "FP32"))),
        "recommend: two user ids": ("recommend", [_input("user_id", [user, user], "BYTES")]),
        "recommend: empty user_id": ("recommend", rec(uid="")),
        "recommend: NUL": ("recommend", rec(uid="a\x00b")),
        "recommend: 1 MB id": ("recommend", rec(uid="x" * 1_000_000)),
        "recommend: invalid UTF-8": ("recommend", [bad_utf8]),
        "recommend: k = 0": ("recommend", rec(_input("k", [0], "INT32"))),
        "recommend: k too large": ("recommend", rec(_input("k", [100_000], "INT32"))),
        "recommend: NUL in query": ("recommend", rec(_input("query", ["a\x00b"], "BYTES"))),
        "recommend: NUL in an exclude id": ("recommend", rec(_input("exclude_item_ids", ["1", "a\x00b"], "BYTES"))),
        "recommend: 1 MB exclude id": ("recommend", rec(_input("exclude_item_ids", ["x" * 1_000_000], "BYTES"))),
        "recommend: 20,000 exclude ids": ("recommend", rec(_input("exclude_item_ids", [str(i) for i in range(20_000)], "BYTES"))),
        "ingest: lengths differ": ("ingest_events", ev(users=[user, user])),
        "ingest: NaN timestamp": ("ingest_events", ev(ts=[float("nan")])),
        "ingest: far future": ("ingest_events", ev(ts=[now + 10 * 86400])),
        "ingest: before 1970": ("ingest_events", ev(ts=[-5.0])),
        "ingest: unknown event type": ("ingest_events", ev(types=["teleport"])),
        "ingest: Inf value": ("ingest_events", ev(extra=[_input("value", [float("inf")], "FP32")])),
        "ingest: NUL in an item id": ("ingest_events", ev(items=["a\x00b"])),
        "upsert: empty text": ("upsert_items", [_input("item_id", ["x"], "BYTES"), _input("text", ["   "], "BYTES")]),
        "upsert: bad metadata": ("upsert_items", [_input("item_id", ["x"], "BYTES"), _input("text", ["t"], "BYTES"), _input("metadata", ["[1,2"], "BYTES")]),
        "upsert: duplicate ids": ("upsert_items", [_input("item_id", ["x", "x"], "BYTES"), _input("text", ["t", "t"], "BYTES")]),
        "upsert: text too long": ("upsert_items", [_input("item_id", ["x"], "BYTES"), _input("text", ["t" * 20_000], "BYTES")]),
    }


@pytest.fixture
def bls_server(supervised, tiny_build):
    sup = supervised(engine="bls")
    cfg = ModelConfig.load(Path(tiny_build["build_dir"]) / "checkpoints" / "model_config.json")
    return sup, Sizes.of(cfg)


def test_every_error_of_every_model_is_invalid_argument_without_paths_or_traces(bls_server) -> None:
    sup, sizes = bls_server
    client = grpcclient.InferenceServerClient(sup.server.grpc_url)
    cases: dict[str, tuple[str, Inputs]] = dict(public_cases(sup.users[0]))
    for contract in ONNX_MODELS:
        for name, inputs in tower_cases(contract.name, sizes).items():
            cases[f"{contract.name}: {name}"] = (contract.name, inputs)
    # Sanity: the towers answer valid requests (so each refusal is about the input, not the model).
    for contract in ONNX_MODELS:
        client.infer(contract.name, [tensor(n, a) for n, a in valid_arrays(contract.name, sizes).items()])
    wrong, said = {}, {}
    for name, (model, inputs) in cases.items():
        try:
            client.infer(model, inputs)
            wrong[name] = "accepted"
        except InferenceServerException as exc:
            message = said[name] = exc.message() or ""
            if exc.status() != "StatusCode.INVALID_ARGUMENT" or any(leak in message for leak in LEAKS):
                wrong[name] = f"{exc.status()}: {message[:300]}"
    assert not wrong, wrong
    # The guard's own words where Triton's checks end (issue 15 item 4: onnxruntime's text before).
    assert "dimension L must be in [1, 8], got 5000" in said["user_tower: L too large"]
    assert "values must be in [0, 8]" in said["reranker: history_types out of range"]
    assert "finite" in said["item_tower: text_embedding NaN"]
    assert len(cases) > 60
    assert sup.server.is_alive() and client.is_model_ready("recommend")
    client.close()


def hostile_loop(url: str, sizes: Sizes, stop: threading.Event, codes: list[str]) -> None:
    client = grpcclient.InferenceServerClient(url)
    cases = [v for k, v in tower_cases("user_tower", sizes).items() if "missing" not in k and "dtype" not in k]
    i = 0
    while not stop.is_set():
        try:
            client.infer("user_tower", cases[i % len(cases)])
            codes.append("OK")
        except InferenceServerException as exc:
            codes.append((exc.status() or "").rsplit(".", 1)[-1])
        i += 1
    client.close()


def run_beside_hostile(sup, sizes: Sizes, seconds: float) -> None:
    stop = threading.Event()
    codes: list[str] = []
    hostile = [threading.Thread(target=hostile_loop, args=(sup.server.grpc_url, sizes, stop, codes)) for _ in range(4)]
    with Load(sup.server.grpc_url, sup.users, threads=4) as load:
        for t in hostile:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in hostile:
            t.join(10)
    assert len(codes) > 50 and set(codes) == {"INVALID_ARGUMENT"}
    # Nothing of the hostile requests reaches another client. The one refusal allowed is the queue's
    # rare load shedding when the machine stalls (UNAVAILABLE "Request timeout expired": waited past
    # the 100 ms queue timeout, retriable, never computed; seen on a loaded 2-core machine, 4 of 1234),
    # bounded far below what hostile requests once did to the others (17.7% failed).
    failed = [(r.code, r.message) for r in load.records if r.code != "OK"]
    shed = [f for f in failed if f == ("UNAVAILABLE", "Request timeout expired")]
    assert len(load.records) > 100 and failed == shed, failed[:5]
    assert len(shed) <= max(3, 0.01 * len(load.records)), (len(shed), len(load.records))


def test_hostile_tower_requests_never_fail_other_clients(bls_server) -> None:
    sup, sizes = bls_server
    run_beside_hostile(sup, sizes, seconds=6.0)


@pytest.mark.faults
def test_hostile_tower_requests_for_longer(bls_server) -> None:
    sup, sizes = bls_server
    run_beside_hostile(sup, sizes, seconds=30.0)

"""The embedded ONNX host's guard (RELIABILITY 20) on a real onnxruntime session of the tiny user
tower, behind a stand-in for pb_utils: a bad request is refused alone, its batch-mates are served
as if alone, and no onnxruntime text or path reaches the client."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from freshrec.export.repository import read_config
from freshrec.server_ext.onnx_model import OnnxModel


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Error:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message, code):
        self.text, self.code = message, code


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


warnings: list[str] = []
PB = SimpleNamespace(
    Tensor=_Tensor, TritonError=_Error, InferenceResponse=_Response,
    Logger=SimpleNamespace(log_warn=warnings.append),
    get_input_tensor_by_name=lambda request, name: _Tensor(name, request[name]) if name in request else None,
)  # fmt: skip


@pytest.fixture(scope="module")
def user_tower(tiny_build):
    repo = Path(tiny_build["repositories"]["embedded"])
    config = read_config(repo / "user_tower")
    args = {"model_name": "user_tower", "model_repository": str(repo / "user_tower"), "model_version": "1",
            "model_config": json.dumps({"parameters": {k: {"string_value": v.string_value} for k, v in config.parameters.items()}})}  # fmt: skip
    return OnnxModel(args, PB)


def history(L: int = 8, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((batch, L, 16)).astype(np.float32)
    return {
        "history_vectors": vectors / np.linalg.norm(vectors, axis=-1, keepdims=True),
        "history_features": rng.standard_normal((batch, L, 2)).astype(np.float32),
        "history_types": rng.integers(1, 9, (batch, L)).astype(np.int64),
        "history_mask": np.ones((batch, L), bool),
    }


def bad(**change) -> dict[str, np.ndarray]:
    out = history(seed=9)
    for name, fn in change.items():
        out[name] = fn(out[name])
    return out


HOSTILE = {
    "L above max_history": (history(L=20000), "dimension L must be in [1, 8], got 20000"),
    "event type out of range": (bad(history_types=lambda a: a * 10**9), "values must be in [0, 8]"),
    "negative event type": (bad(history_types=lambda a: -a), "values must be in [0, 8]"),
    "NaN vector": (bad(history_vectors=lambda a: np.full_like(a, np.nan)), "finite"),
    "Inf feature": (bad(history_features=lambda a: np.full_like(a, np.inf)), "finite"),
    "batch sizes disagree": (bad(history_mask=lambda a: np.ones((2, 8), bool)), "batch size"),
    "L disagrees across inputs": (bad(history_mask=lambda a: np.ones((1, 5), bool)), "disagree on dimension L"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_request_is_refused_alone(user_tower, case):
    request, expected = HOSTILE[case]
    good = [history(seed=1), history(seed=2, batch=3)]
    alone = [user_tower.execute([g])[0].outputs["user_vector"] for g in good]
    out = user_tower.execute([good[0], request, good[1]])
    assert out[1].error.code == "INVALID_ARG" and expected in out[1].error.text
    assert out[1].error.text.startswith("user_tower: ")
    for o, a in zip((out[0], out[2]), alone):
        assert o.error is None
        np.testing.assert_allclose(o.outputs["user_vector"], a, atol=1e-6)


def test_a_graph_failure_fails_only_its_request_and_says_nothing_of_onnxruntime(user_tower):
    """Beyond the declared bounds (here a guard emptied by hand), onnxruntime itself refuses: the
    group is rerun one by one, only the culprit fails, with a message free of paths and node names."""
    unguarded = OnnxModel.__new__(OnnxModel)
    unguarded.__dict__.update(user_tower.__dict__, max_dims={}, value_ranges={})
    out = unguarded.execute([history(seed=3), bad(history_types=lambda a: a * 10**9)])
    assert out[0].error is None and out[0].outputs["user_vector"].shape == (1, 16)
    text = out[1].error.text
    assert out[1].error.code == "INVALID_ARG" and text == "user_tower: the request's values are outside what the model accepts"
    assert warnings and "Gather" in warnings[-1]  # onnxruntime's words stay in the server log

"""Hosts one exported ONNX model in an onnxruntime session inside the Python backend (the
embedded tritonserver has no native onnxruntime backend). Requests that Triton's dynamic
batcher hands over together are concatenated into one session run.

The graph is guarded (RELIABILITY 20): Triton checks only the fixed dims, so each request's
dynamic dims (L, C, T), index values and float values are checked here against the bounds the
exporter wrote (`guard` parameter, export/repository.py:guard_bounds). A bad request gets its own
INVALID_ARGUMENT; if a group still fails in onnxruntime its members run one by one so only the
culprit fails; onnxruntime's own text (paths, node names) goes to the server log, never to clients.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from freshrec.contract import BY_NAME, ONNX_FILE
from freshrec.serving.engines import onnx_session


class BadRequest(ValueError):
    """A request this model refuses on its own (the others in its batch are unaffected)."""


class OnnxModel:
    def __init__(self, args: dict, pb) -> None:
        self.pb = pb
        self.contract = BY_NAME[args["model_name"]]
        params = json.loads(args["model_config"]).get("parameters", {})
        threads = int(params.get("ort_threads", {}).get("string_value", "1"))
        guard = json.loads(params.get("guard", {}).get("string_value", "{}"))
        self.max_dims: dict[str, int] = guard.get("dims", {})
        self.value_ranges: dict[str, list[int]] = guard.get("values", {})
        cuda = int(args.get("model_instance_device_id", 0)) if args.get("model_instance_kind") == "GPU" else None
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        self.session = onnx_session(path, threads, cuda)

    def check(self, feed: dict[str, np.ndarray]) -> None:
        """One request's inputs against the contract's bounds; raises BadRequest."""
        batch = None
        for spec in self.contract.inputs:
            arr = feed[spec.name]
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise BadRequest(f"input {spec.name!r} has batch size {arr.shape[0]}, other inputs {batch}")
            for dim, size in zip(spec.dims, arr.shape[1:]):
                if isinstance(dim, str) and dim in self.max_dims and not 1 <= size <= self.max_dims[dim]:
                    raise BadRequest(f"input {spec.name!r}: dimension {dim} must be in [1, {self.max_dims[dim]}], got {size}")
            if arr.size == 0:
                continue
            if spec.name in self.value_ranges:
                lo, hi = self.value_ranges[spec.name]
                if arr.min() < lo or arr.max() > hi:
                    raise BadRequest(f"input {spec.name!r}: values must be in [{lo}, {hi}]")
            elif arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise BadRequest(f"input {spec.name!r}: values must be finite (no NaN or Inf)")
        # Inputs sharing a symbolic dim (L in every history input, C in the candidates) must agree.
        for dim in self.max_dims:
            sizes = {feed[s.name].shape[1 + i] for s in self.contract.inputs for i, d in enumerate(s.dims) if d == dim}
            if len(sizes) > 1:
                raise BadRequest(f"inputs disagree on dimension {dim}: {sorted(sizes)}")

    def execute(self, requests):
        names = self.contract.input_names
        responses: list = [None] * len(requests)
        feeds: list = [None] * len(requests)
        # Group valid requests whose non-batch dims agree (same L, C or T); each group is one run.
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                feeds[i] = {n: self.pb.get_input_tensor_by_name(request, n).as_numpy() for n in names}
                self.check(feeds[i])
            except BadRequest as exc:
                responses[i] = self._refuse(str(exc))
                continue
            groups.setdefault(tuple(feeds[i][n].shape[1:] for n in names), []).append(i)
        for members in groups.values():
            try:
                self._run(members, feeds, responses)
            except Exception:  # noqa: BLE001 - isolate: one by one, so only the culprit fails
                for i in members:
                    try:
                        self._run([i], feeds, responses)
                    except Exception as exc:  # noqa: BLE001 - onnxruntime's text stays in the log
                        self.pb.Logger.log_warn(f"{self.contract.name}: a request failed in onnxruntime: {exc}")
                        responses[i] = self._refuse("the request's values are outside what the model accepts")
        return responses

    def _run(self, members: list[int], feeds: list, responses: list) -> None:
        names, outs = self.contract.input_names, self.contract.output_names
        batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in names}
        results = self.session.run(outs, batch)
        start = 0
        for i in members:
            size = feeds[i][names[0]].shape[0]
            responses[i] = self.pb.InferenceResponse(
                output_tensors=[self.pb.Tensor(o, r[start : start + size]) for o, r in zip(outs, results)]
            )
            start += size

    def _refuse(self, message: str):
        error = self.pb.TritonError(f"{self.contract.name}: {message}", self.pb.TritonError.INVALID_ARG)
        return self.pb.InferenceResponse(error=error)

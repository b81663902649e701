"""Hosts one exported ONNX model in an onnxruntime session inside the Python backend (the
embedded tritonserver has no native onnxruntime backend). Requests that Triton's dynamic
batcher hands over together are concatenated into one session run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from freshrec.contract import BY_NAME, ONNX_FILE
from freshrec.serving.engines import onnx_session


class OnnxModel:
    def __init__(self, args: dict, pb) -> None:
        self.pb = pb
        self.contract = BY_NAME[args["model_name"]]
        params = json.loads(args["model_config"]).get("parameters", {})
        threads = int(params.get("ort_threads", {}).get("string_value", "1"))
        cuda = int(args.get("model_instance_device_id", 0)) if args.get("model_instance_kind") == "GPU" else None
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        self.session = onnx_session(path, threads, cuda)

    def execute(self, requests):
        pb = self.pb
        names, outs = self.contract.input_names, self.contract.output_names
        feeds = [{n: pb.get_input_tensor_by_name(r, n).as_numpy() for n in names} for r in requests]
        # Group requests whose non-batch dims agree (same L, C or T); each group is one run.
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(feeds):
            groups.setdefault(tuple(f[n].shape[1:] for n in names), []).append(i)
        responses = [None] * len(requests)
        for members in groups.values():
            batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in names}
            results = self.session.run(outs, batch)
            start = 0
            for i in members:
                size = feeds[i][names[0]].shape[0]
                responses[i] = pb.InferenceResponse(
                    output_tensors=[pb.Tensor(o, r[start : start + size]) for o, r in zip(outs, results)]
                )
                start += size
        return responses

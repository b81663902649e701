"""Hosts one exported ONNX model in an onnxruntime session inside the Python backend (the
embedded tritonserver has no native onnxruntime backend). Requests that Triton's dynamic
batcher hands over together are concatenated into one session run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from freshrec.contract import BY_NAME


def onnx_session(path: Path, threads: int = 1, cuda_device: int | None = None):
    """The onnxruntime session every served ONNX model runs in: `threads` intra-op threads, one
    inter-op thread, every graph optimisation; on CUDA device `cuda_device` when one is given.

    A GPU instance never falls back to the CPU quietly: without onnxruntime's CUDA provider it
    fails to load, saying so (a GPU deployment running its towers on the CPU would only show as
    latency)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers: list = ["CPUExecutionProvider"]
    if cuda_device is not None:
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"{path}: a GPU instance (KIND_GPU) needs onnxruntime's CUDAExecutionProvider, and onnxruntime "
                f"{ort.__version__} here has only {', '.join(available)}: install onnxruntime-gpu, or serve a CPU "
                "repository (`freshrec export --device cpu`)"
            )
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": cuda_device}))
    return ort.InferenceSession(str(path), opts, providers=providers)


class OnnxModel:
    def __init__(self, args: dict, pb) -> None:
        self.pb = pb
        self.contract = BY_NAME[args["model_name"]]
        params = json.loads(args["model_config"]).get("parameters", {})
        threads = int(params.get("ort_threads", {}).get("string_value", "1"))
        cuda = int(args.get("model_instance_device_id", 0)) if args.get("model_instance_kind") == "GPU" else None
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
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

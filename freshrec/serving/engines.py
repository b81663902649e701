"""Engines run the exported models for the pipeline (`freshrec.serving.pipeline`).

- `OnnxEngine`: the repository's ONNX files in this process with onnxruntime (DeployConfig.engine
  "inprocess"); `onnx_session` is the one session recipe every served ONNX model runs in.
- `TorchEngine`: the PyTorch modules of a build's checkpoints: the reference the served pipeline
  is checked against (`load_reference`).
- The BLS engine (Triton requests to the tower models) lives with the Python-backend code in
  `freshrec.server_ext.bls`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from freshrec.config import ModelConfig
from freshrec.contract import BY_NAME, ONNX_FILE
from freshrec.models.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch


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


class TorchEngine:
    """Runs the PyTorch modules directly: the reference for the served pipeline. Takes numpy
    arrays or torch tensors, returns torch tensors."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.modules = {name: m.eval() for name, m in modules.items()}
        self.contracts = BY_NAME

    def run(self, model: str, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        import torch

        c = self.contracts[model]
        with torch.no_grad():
            out = self.modules[model](*(torch.as_tensor(inputs[n]) for n in c.input_names))
        return dict(zip(c.output_names, out if isinstance(out, tuple) else (out,)))


def _host(x: Any) -> np.ndarray:
    """numpy as is; a torch tensor (a GPU pipeline's) copied to host memory."""
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


class OnnxEngine:
    """Runs the repository's exported ONNX models in this process with onnxruntime: the
    pipeline's stages without a Triton hop (DeployConfig.engine "inprocess"). Takes numpy (or
    torch) inputs, returns numpy. Sessions open on first use of a model, or up front with `load`;
    `cuda_device` puts them on that GPU."""

    def __init__(self, repository: Path, version: int | str, threads: int = 1, cuda_device: int | None = None) -> None:
        self.repository, self.version, self.threads = Path(repository), str(version), threads
        self.cuda_device = cuda_device
        self.contracts = BY_NAME
        self.sessions: dict[str, Any] = {}

    def load(self, *models: str) -> None:
        for m in models:
            self._session(m)

    def _session(self, model: str):
        s = self.sessions.get(model)
        if s is None:
            path = self.repository / model / self.version / ONNX_FILE
            if not path.exists():
                raise FileNotFoundError(f"{path} missing: the in-process engine runs the ONNX models of its own repository")
            s = self.sessions[model] = onnx_session(path, self.threads, self.cuda_device)
        return s

    def run(self, model: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        c = self.contracts[model]
        outs = self._session(model).run(list(c.output_names), {n: _host(inputs[n]) for n in c.input_names})
        return dict(zip(c.output_names, outs))


def load_reference(build_dir: Path) -> tuple[TorchEngine, Tokenizer, ModelConfig]:
    """The PyTorch reference of the served models, from a build's checkpoints."""
    from freshrec.models.checkpoints import load_models

    cfg, modules, minilm = load_models(build_dir)
    return TorchEngine(modules), Tokenizer(minilm, cfg.text.max_tokens), cfg

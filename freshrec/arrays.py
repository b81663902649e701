"""Where the pipeline's arrays live, behind one small interface, so the pipeline and the index are
written once for both places:

- `NumpyArrays` (the CPU): numpy end to end. onnxruntime takes and returns numpy, the store
  returns numpy, and the int8 scan and the graph search numpy, so on the CPU request path torch
  would only add conversions (each a few microseconds, about ten per request).
- `TorchArrays` (a GPU): torch tensors on the device. The item matrix stays there (the exact scan
  is one kernel), and candidate vectors reach the tower models by DLPack without a host copy
  (`freshrec.server_ext.tensors.to_pb`).

Engines accept either kind and return what is natural to them; the pipeline passes every result
through `asarray`, a no-op when it is already of the right kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class NumpyArrays:
    """numpy arrays in host memory."""

    kind = "numpy"

    def asarray(self, x: Any, dtype: Any = None) -> np.ndarray:
        if not isinstance(x, np.ndarray) and hasattr(x, "detach"):  # a torch tensor (the reference engine)
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=dtype)

    def numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def zeros(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Unit norm along the last axis (as torch.nn.functional.normalize, eps 1e-12)."""
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def topk(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k largest values of a 1-d array, best first: (indices int64, values)."""
        k = min(k, len(x))
        if k <= 0:
            return np.zeros(0, np.int64), x[:0]
        part = np.argpartition(-x, k - 1)[:k] if k < len(x) else np.arange(len(x))
        order = part[np.argsort(-x[part], kind="stable")]
        return order.astype(np.int64, copy=False), x[order]


class TorchArrays:
    """torch tensors on one device (a GPU instance)."""

    kind = "torch"
    _DTYPES: dict[Any, str] = {np.float32: "float32", np.int64: "int64", np.bool_: "bool"}

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def _dtype(self, dtype: Any):
        return None if dtype is None else getattr(self.torch, self._DTYPES[np.dtype(dtype).type])

    def asarray(self, x: Any, dtype: Any = None):
        t = x if isinstance(x, self.torch.Tensor) else self.torch.from_numpy(np.ascontiguousarray(x))
        return t.to(device=self.device, dtype=self._dtype(dtype))

    def numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def zeros(self, shape: tuple[int, ...], dtype: Any = np.float32):
        return self.torch.zeros(shape, dtype=self._dtype(dtype), device=self.device)

    def normalize(self, x):
        return self.torch.nn.functional.normalize(x, dim=-1)

    def topk(self, x, k: int):
        top = self.torch.topk(x, min(k, len(x)))
        return top.indices, top.values


def arrays_for(device: Any) -> NumpyArrays | TorchArrays:
    """numpy for the CPU, torch tensors on any other device (a GPU)."""
    if str(device) == "cpu":
        return NumpyArrays()
    return TorchArrays(device)

"""The one module converting between pb_utils tensors and domain values.

`pb` is the `triton_python_backend_utils` module, passed in by model.py so this code imports and
unit-tests outside the stub process.
"""

from __future__ import annotations

import numpy as np

from freshrec.contract import MAX_BATCH_ITEMS
from freshrec.serving.pipeline import InvalidInput


def _input(pb, request, name: str):
    return pb.get_input_tensor_by_name(request, name)


def strings(pb, request, name: str, required: bool = True) -> list[str] | None:
    """A TYPE_STRING input as a list of str; invalid UTF-8 is refused, not replaced."""
    t = _input(pb, request, name)
    if t is None:
        if required:
            raise InvalidInput(f"missing required input {name!r}")
        return None
    arr = t.as_numpy().reshape(-1)
    if len(arr) > MAX_BATCH_ITEMS:
        raise InvalidInput(f"input {name!r} has {len(arr)} elements; at most {MAX_BATCH_ITEMS} per request")
    out = []
    for v in arr:
        if isinstance(v, str):
            out.append(v)
            continue
        try:
            out.append(bytes(v).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r} is not valid UTF-8") from None
    return out


def one_string(pb, request, name: str, required: bool = True) -> str | None:
    values = strings(pb, request, name, required)
    if values is None:
        return None
    if len(values) != 1:
        raise InvalidInput(f"input {name!r} must hold exactly one value, got {len(values)}")
    return values[0]


def numbers(pb, request, name: str, dtype, required: bool = True) -> np.ndarray | None:
    t = _input(pb, request, name)
    if t is None:
        if required:
            raise InvalidInput(f"missing required input {name!r}")
        return None
    arr = np.asarray(t.as_numpy(), dtype=dtype).reshape(-1)
    if len(arr) > MAX_BATCH_ITEMS:
        raise InvalidInput(f"input {name!r} has {len(arr)} elements; at most {MAX_BATCH_ITEMS} per request")
    return arr


def _one_number(pb, request, name: str, dtype, default):
    arr = numbers(pb, request, name, dtype, required=False)
    if arr is None:
        return default
    if len(arr) != 1:
        raise InvalidInput(f"input {name!r} must hold exactly one value, got {len(arr)}")
    return arr[0].item()


def one_int(pb, request, name: str, default: int) -> int:
    return int(_one_number(pb, request, name, np.int64, default))


def one_bool(pb, request, name: str, default: bool) -> bool:
    return bool(_one_number(pb, request, name, np.bool_, default))


def string_tensor(pb, name: str, values: list[str]):
    return pb.Tensor(name, np.array([v.encode("utf-8") for v in values], dtype=np.object_))


def to_pb(pb, name: str, t):
    """numpy or torch -> pb_utils.Tensor; GPU tensors travel by DLPack without a host copy."""
    if isinstance(t, np.ndarray):
        return pb.Tensor(name, np.ascontiguousarray(t))
    if t.is_cuda:
        import torch

        return pb.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(t.contiguous()))
    return pb.Tensor(name, t.contiguous().numpy())


def from_pb(t):
    """pb_utils.Tensor -> numpy in host memory, or a torch tensor where it lies on a GPU."""
    if t.is_cpu():
        return t.as_numpy()
    import torch

    return torch.from_dlpack(t.to_dlpack())

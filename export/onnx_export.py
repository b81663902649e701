"""PyTorch -> ONNX for every model of the contract, each checked against PyTorch on fresh
random inputs (a tolerance per model) and with onnx.checker.

Input names and dynamic axes come from `freshrec.contract`: the batch dim plus the history
length L, candidate count C and token count T are dynamic in every graph.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from freshrec.config import EVENT_TYPES, ModelConfig
from freshrec.contract import ModelContract, Sizes

OPSET = 18
# The exporter warns about torchvision ops it cannot register; freshrec uses none of them.
logging.getLogger("torch.onnx").setLevel(logging.ERROR)


class ParityError(RuntimeError):
    """An exported graph disagrees with its PyTorch module beyond the model's tolerance."""


def random_inputs(contract: ModelContract, sizes: Sizes, cfg: ModelConfig, batch: int, rng: np.random.Generator, vary: bool = False) -> dict[str, torch.Tensor]:
    """Plausible random inputs for a model. `vary` draws other L/C/T than the config's, to prove
    the dynamic axes really are dynamic."""
    dims = {"L": sizes.L, "C": sizes.C, "T": sizes.T}
    if vary:
        dims = {k: max(2, int(v) - 1 - int(rng.integers(0, max(1, int(v) // 2)))) for k, v in dims.items()}
    out: dict[str, torch.Tensor] = {}
    for spec in contract.inputs:
        shape = (batch, *[dims.get(d, getattr(sizes, d, None)) if isinstance(d, str) else d for d in spec.dims])
        if spec.name in ("history_mask", "candidate_mask"):
            x = rng.random(shape) > 0.3
            x[..., -1] = True  # a real newest event / at least one real candidate
            out[spec.name] = torch.from_numpy(x)
        elif spec.name == "attention_mask":
            lengths = rng.integers(1, shape[1] + 1, size=batch)
            out[spec.name] = torch.from_numpy((np.arange(shape[1])[None] < lengths[:, None]).astype(np.int64))
        elif spec.name == "input_ids":
            out[spec.name] = torch.from_numpy(rng.integers(1000, 30000, size=shape).astype(np.int64))
        elif spec.name == "history_types":
            out[spec.name] = torch.from_numpy(rng.integers(1, len(EVENT_TYPES), size=shape).astype(np.int64))
        elif spec.name == "id_index":
            out[spec.name] = torch.from_numpy(rng.integers(0, cfg.item.id_vocab + 1, size=shape).astype(np.int64))
        elif spec.name in ("history_vectors", "candidate_vectors", "text_embedding"):
            x = rng.standard_normal(shape).astype(np.float32)
            out[spec.name] = torch.from_numpy(x / np.linalg.norm(x, axis=-1, keepdims=True))
        else:
            out[spec.name] = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    return out


def export_onnx(contract: ModelContract, module: torch.nn.Module, sizes: Sizes, cfg: ModelConfig, path: Path) -> Path:
    """Writes `path` (ONNX, opset 18) with dynamic batch and L/C/T axes, and checks it."""
    import onnx

    module = module.eval()
    rng = np.random.default_rng(0)
    example = random_inputs(contract, sizes, cfg, batch=2, rng=rng)
    batch = torch.export.Dim("batch", min=1, max=4096)
    named = {"L": torch.export.Dim("L", min=1, max=4096), "C": torch.export.Dim("C", min=1, max=65536), "T": torch.export.Dim("T", min=2, max=512)}
    dynamic = {}
    for spec in contract.inputs:
        axes = {0: batch}
        for i, d in enumerate(spec.dims):
            if d in named:
                axes[i + 1] = named[d]
        dynamic[spec.name] = axes
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(example[n] for n in contract.input_names),
            input_names=contract.input_names,
            output_names=contract.output_names,
            dynamic_shapes=dynamic,
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
        )
        program.optimize()
        program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def check_parity(contract: ModelContract, module: torch.nn.Module, path: Path, sizes: Sizes, cfg: ModelConfig, seed: int = 1) -> float:
    """Runs PyTorch and onnxruntime on fresh random inputs (config sizes and other L/C/T, several
    batch sizes); returns the max abs difference, raising ParityError above the tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch, vary in ((1, False), (3, False), (2, True)):
        inputs = random_inputs(contract, sizes, cfg, batch, rng, vary=vary)
        with torch.no_grad():
            expected = module.eval()(*(inputs[n] for n in contract.input_names))
        expected = expected if isinstance(expected, tuple) else (expected,)
        for got, want in zip(session.run(contract.output_names, {n: t.numpy() for n, t in inputs.items()}), expected):
            want = want.numpy()
            valid = want > -1e8  # masked candidates are -1e9 in both; compare real scores
            worst = max(worst, float(np.abs(got - want)[valid].max()))
    if worst > contract.tolerance:
        raise ParityError(f"{contract.name}: ONNX differs from PyTorch by {worst:.3g} > tolerance {contract.tolerance:.3g}")
    return worst


def export_all(modules: dict[str, torch.nn.Module], cfg: ModelConfig, out_dir: Path, log=print) -> dict[str, dict]:
    """Exports and checks every ONNX model of the contract -> {name: {path, max_abs_diff, seconds}}."""
    from freshrec.contract import ONNX_MODELS

    sizes = Sizes.of(cfg)
    report = {}
    for contract in ONNX_MODELS:
        t0 = time.time()
        path = export_onnx(contract, modules[contract.name], sizes, cfg, out_dir / f"{contract.name}.onnx")
        diff = check_parity(contract, modules[contract.name], path, sizes, cfg)
        report[contract.name] = {"path": str(path), "max_abs_diff": diff, "tolerance": contract.tolerance, "seconds": round(time.time() - t0, 2)}
        log(f"exported {contract.name}: max |onnx - torch| = {diff:.2e} (tolerance {contract.tolerance:.0e}) in {time.time() - t0:.1f}s")
    return report

"""Generates the Triton model repository from the contract (Merlin-style: configs built with
`model_config_pb2` and written with `text_format`, model.py files copied from package resources).

Two flavours from one command:
- `embedded`: every model on the Python backend; ONNX models run in an onnxruntime session
  hosted by `server_ext/models/onnx_model/model.py` (the pytriton tritonserver has only that backend).
- `ngc`: ONNX models on Triton's native `onnxruntime` backend (NGC Triton container); with
  `device="gpu"` onnxruntime runs them through its TensorRT execution provider, which builds
  its engines on the target GPU.
The repository is build output: regenerating it from the same inputs gives the same tree.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from freshrec.config import DeployConfig, ModelConfig
from freshrec.contract import (CARD_FILE, FORGET_USER, ONNX_FILE, ONNX_MODELS, PIPELINE_MODELS, SETTINGS_FILE, TOKENIZER_FILE, TOPICS_FILE,
                               ModelContract,
                               Sizes, TensorSpec)  # fmt: skip

REJECTED = "rejected"  # recommend/rejected/: cards of candidates the gate refused (never a version)


def _tensor(cls, spec: TensorSpec, sizes: Sizes):
    t = cls(name=spec.name, data_type=getattr(mc, spec.dtype), dims=sizes.resolve(spec, static=False))
    if spec.optional and cls is mc.ModelInput:  # an optional output is declared as any other (computed on request)
        t.optional = True
    return t


def model_config(contract: ModelContract, sizes: Sizes, deploy: DeployConfig, backend: str, parameters: dict[str, str]) -> mc.ModelConfig:
    """The config.pbtxt message of one model."""
    cfg = mc.ModelConfig(name=contract.name, backend=backend)
    # The served version is pinned: a version folder added by `freshrec update` is served only
    # once `freshrec rollout` pins it (and loads it through the repository API).
    cfg.version_policy.specific.versions.append(deploy.version)
    cfg.input.extend(_tensor(mc.ModelInput, s, sizes) for s in contract.inputs)
    cfg.output.extend(_tensor(mc.ModelOutput, s, sizes) for s in contract.outputs)
    kind = mc.ModelInstanceGroup.KIND_GPU if deploy.device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    if contract.batched:
        cfg.max_batch_size = deploy.max_batch_size
        cfg.dynamic_batching.SetInParent()  # present even when every field is at its default
        cfg.dynamic_batching.max_queue_delay_microseconds = deploy.max_queue_delay_us
        count = deploy.tower_instances
    else:
        cfg.max_batch_size = 0  # one request = one user (recommend) or one write (ingest/upsert)
        count = deploy.pipeline_instances
        if deploy.queue_size > 0:
            # A short queue that refuses the rest at once (UNAVAILABLE, retriable) instead of an
            # unbounded one that grows with the load; requests are never batched (max_batch_size 0).
            cfg.dynamic_batching.max_queue_delay_microseconds = 0
            policy = cfg.dynamic_batching.default_queue_policy
            policy.max_queue_size = deploy.queue_size
            policy.timeout_action = mc.ModelQueuePolicy.REJECT
            policy.default_timeout_microseconds = deploy.queue_timeout_us
            policy.allow_timeout_override = True  # a client's own, shorter deadline wins
    if contract.name == FORGET_USER.name:  # a rare operator call that touches no tensor: one CPU instance
        kind, count = mc.ModelInstanceGroup.KIND_CPU, 1
    cfg.instance_group.add(kind=kind, count=count)
    for key, value in sorted(parameters.items()):
        cfg.parameters[key].string_value = value
    if backend == "onnxruntime" and deploy.device == "gpu":
        # TensorRT inside the onnxruntime backend: engines are built on the serving GPU.
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = "FP32"
    return cfg


def guard_bounds(contract: ModelContract, sizes: Sizes, deploy: DeployConfig) -> dict:
    """What an exported graph accepts beyond the fixed dims Triton checks itself: the largest
    dynamic dims (L, C, T) and the value range of each index input. The embedded ONNX host
    (server_ext/onnx_model.py) refuses anything else per request. C reaches max_k: recommend pads
    the candidates to max(num_candidates, k)."""
    dims = {"L": sizes.L, "C": max(sizes.C, deploy.max_k), "T": sizes.T}
    used = {d for spec in contract.inputs for d in spec.dims if isinstance(d, str)}
    values = {spec.name: list(sizes.value_range(spec)) for spec in contract.inputs if spec.values is not None}
    return {"dims": {d: n for d, n in dims.items() if d in used}, "values": values}


def write_config(model_dir: Path, cfg: mc.ModelConfig) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(cfg))


def read_config(path: Path) -> mc.ModelConfig:
    """A config.pbtxt file (or a model folder holding one) as a ModelConfig message."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def version_dir(repository: Path, model: str, version: int | str | None = None) -> Path:
    """`model`'s folder for `version` in a repository; by default its highest version there."""
    d = Path(repository) / model
    if version is not None:
        return d / str(version)
    versions = sorted((int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True) if d.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"{d}: no model version folder (is {repository} a freshrec model repository?)")
    return d / str(versions[0])


def read_settings(repository: Path, version: int | str | None = None) -> dict:
    """What the pipeline models were exported with: {"model": ModelConfig dict, "deploy":
    DeployConfig dict (the state URL included)}, from recommend's version folder."""
    return json.loads((version_dir(repository, "recommend", version) / SETTINGS_FILE).read_text())


def versions(repository: Path, model: str = "recommend") -> list[int]:
    """The version folders of `model` in a repository, ascending."""
    d = Path(repository) / model
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


def served_versions(repository: Path, model: str = "recommend") -> list[int]:
    """The versions `model`'s version policy (config.pbtxt) makes Triton serve, ascending."""
    policy = read_config(Path(repository) / model).version_policy
    have = versions(repository, model)
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        return sorted(v for v in policy.specific.versions if v in have)
    if kind == "all":
        return have
    return have[-max(1, policy.latest.num_versions) :]


def pin_versions(repository: Path, model: str, pinned: list[int]) -> None:
    """Makes `model` serve exactly `pinned` (version_policy specific), written atomically: the
    next load of the model through Triton's repository API (or a restart) serves them."""
    d = Path(repository) / model
    cfg = read_config(d)
    cfg.version_policy.specific.versions[:] = sorted(set(int(v) for v in pinned))
    tmp = d / "config.pbtxt.tmp"
    tmp.write_text(text_format.MessageToString(cfg))
    tmp.replace(d / "config.pbtxt")


def read_card(repository: Path, version: int) -> dict:
    """A version's model card (`write_card`)."""
    path = version_dir(repository, "recommend", version) / CARD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model card (a repository exported before model cards; run `freshrec build` again)")
    return json.loads(path.read_text())


def write_card(repository: Path, card: dict) -> Path:
    """Writes a version's card (a refused candidate's into recommend/rejected/)."""
    if card["gate"].get("passed", True) or card.get("version") in versions(repository):
        path = version_dir(repository, "recommend", card["version"]) / CARD_FILE
    else:
        path = Path(repository) / "recommend" / REJECTED / f"{card['version']}-{int(card['created'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def rejected_cards(repository: Path) -> list[dict]:
    d = Path(repository) / "recommend" / REJECTED
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def write_version(
    repository: Path,
    onnx_files: dict[str, Path],
    cfg: ModelConfig,
    deploy: DeployConfig,
    tokenizer_dir: Path,
    topics: Path | None = None,
) -> None:
    """Adds version `deploy.version` to an existing repository: each model's version folder, the
    same layout `write_repository` writes, beside the versions already there (configs and pins
    unchanged, except the embedded graphs' guard, which must admit the largest version's id rows).
    Graph files are hard-linked where possible (an unchanged model's graph is its parent's file).
    `topics`: the topic model the version serves (an update keeps its parent's)."""
    import os

    repository = Path(repository)
    sizes = Sizes.of(cfg)
    v = str(deploy.version)
    settings = json.dumps({"model": cfg.to_dict(), "deploy": deploy.to_dict()}, indent=2, sort_keys=True)
    for contract in ONNX_MODELS:
        d = repository / contract.name
        if not d.is_dir():
            continue
        (d / v).mkdir(parents=True, exist_ok=True)
        target = d / v / ONNX_FILE
        target.unlink(missing_ok=True)
        try:
            os.link(onnx_files[contract.name], target)
        except OSError:
            shutil.copyfile(onnx_files[contract.name], target)
        if deploy.flavour == "embedded":
            (d / v / "model.py").write_bytes(_model_py("onnx_model"))
            config = read_config(d)
            if "guard" in config.parameters:
                config.parameters["guard"].string_value = json.dumps(guard_bounds(contract, sizes, deploy), sort_keys=True)
                write_config(d, config)
    for contract in PIPELINE_MODELS:
        d = repository / contract.name
        (d / v).mkdir(parents=True, exist_ok=True)
        (d / v / "model.py").write_bytes(_model_py("pipeline"))
        (d / v / SETTINGS_FILE).write_text(settings)
        if contract.name in ("recommend", "upsert_items"):
            shutil.copyfile(Path(tokenizer_dir) / TOKENIZER_FILE, d / v / TOKENIZER_FILE)
            if topics is not None:
                shutil.copyfile(topics, d / v / TOPICS_FILE)


def version_checksums(repository: Path, version: int) -> dict[str, str]:
    """SHA-256 of every graph, checkpoint and topic model of a version, by path relative to the repository."""
    import hashlib

    out = {}
    repository = Path(repository)
    for d in sorted(repository.iterdir()):
        vdir = d / str(version)
        if (d / "config.pbtxt").exists() and vdir.is_dir():
            for f in sorted(vdir.rglob("*")):
                if f.is_file() and (f.suffix in (".onnx", ".pt") or f.name in (SETTINGS_FILE, TOPICS_FILE)):
                    h = hashlib.sha256()
                    with open(f, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            h.update(chunk)
                    out[str(f.relative_to(repository))] = h.hexdigest()
    return out


def remove_version(repository: Path, version: int) -> None:
    """Deletes every model's folder of `version` (never a served one: check `served_versions`)."""
    for d in Path(repository).iterdir():
        if (d / "config.pbtxt").exists() and (d / str(version)).is_dir():
            shutil.rmtree(d / str(version))


def _model_py(name: str) -> bytes:
    return resources.files("freshrec.server_ext").joinpath("models", name, "model.py").read_bytes()


def write_repository(
    out: Path,
    onnx_dir: Path,
    cfg: ModelConfig,
    deploy: DeployConfig,
    tokenizer_dir: Path,
    topics: Path | None = None,
) -> Path:
    """Writes one flavour of the repository into `out` (replacing what was there) and returns it.
    `topics`: the build's topic model file, served beside recommend (explanations) and
    upsert_items (a new item's mixture); None for a build without one."""
    sizes = Sizes.of(cfg)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    v = str(deploy.version)
    for contract in ONNX_MODELS:
        d = tmp / contract.name
        if deploy.flavour == "embedded":
            params = {"ort_threads": str(deploy.ort_threads),
                      "guard": json.dumps(guard_bounds(contract, sizes, deploy), sort_keys=True)}  # fmt: skip
            write_config(d, model_config(contract, sizes, deploy, "python", params))
            (d / v).mkdir(parents=True)
            (d / v / "model.py").write_bytes(_model_py("onnx_model"))
        elif deploy.flavour == "ngc":
            cfg_msg = model_config(contract, sizes, deploy, "onnxruntime", {})
            cfg_msg.default_model_filename = ONNX_FILE
            write_config(d, cfg_msg)
            (d / v).mkdir(parents=True)
        else:
            raise ValueError(f"unknown flavour {deploy.flavour!r}; expected 'embedded' or 'ngc'")
        shutil.copyfile(onnx_dir / f"{contract.name}.onnx", d / v / ONNX_FILE)

    settings = json.dumps({"model": cfg.to_dict(), "deploy": deploy.to_dict()}, indent=2, sort_keys=True)
    for contract in PIPELINE_MODELS:
        d = tmp / contract.name
        write_config(d, model_config(contract, sizes, deploy, "python", {}))
        (d / v).mkdir(parents=True)
        (d / v / "model.py").write_bytes(_model_py("pipeline"))
        (d / v / SETTINGS_FILE).write_text(settings)
        if contract.name in ("recommend", "upsert_items"):  # these embed text
            shutil.copyfile(Path(tokenizer_dir) / TOKENIZER_FILE, d / v / TOKENIZER_FILE)
            if topics is not None:
                shutil.copyfile(topics, d / v / TOPICS_FILE)

    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out

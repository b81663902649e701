"""RELIABILITY 16, 21: a failed load of a new version, or a failed reload of the serving one,
never takes the server down; the old version keeps serving with 0 failed requests and readiness
stays true (issue 15, item 1: Triton 2.51 aborted on the second try before the metrics fix)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from freshrec.export.repository import pin_versions
from tests.faults.conftest import private_repository, status
from tests.faults.traffic import Load


def _break_new_version(repo: Path, attempt: int) -> None:
    """recommend/2 without the towers' version-2 files: the in-process engine's initialize
    raises FileNotFoundError after the Service built its metrics (the crashing path)."""
    if not (repo / "recommend" / "2").exists():
        shutil.copytree(repo / "recommend" / "1", repo / "recommend" / "2")
        pin_versions(repo, "recommend", [2])  # what `freshrec rollout` does before the load


def _break_reload(repo: Path, attempt: int) -> None:
    """The serving version reloaded with the user tower's graph gone; a new mtime on model.py
    makes each try a real reload."""
    graph = repo / "user_tower" / "1" / "model.onnx"
    if graph.exists():
        graph.rename(graph.with_suffix(".gone"))
    future = time.time() + attempt + 1
    os.utime(repo / "recommend" / "1" / "model.py", (future, future))


KINDS = {"new-version": _break_new_version, "reload": _break_reload}


def run_failing_loads(supervised, tiny_build, tmp_path: Path, kind: str, tries: int) -> None:
    repo = private_repository(Path(tiny_build["repositories"]["embedded"]), tmp_path / "repo")
    sup = supervised(repository=repo)
    server = sup.server
    admin = httpclient.InferenceServerClient(server.http_url, network_timeout=60, connection_timeout=60)
    try:
        # freshrec's client (retries UNAVAILABLE): on 2 cores a failing load's stubs starve the
        # serving ones for a moment, and the queue refuses a request it held past 100 ms.
        with Load(server.grpc_url, sup.users, threads=2, retrying=True) as load:
            time.sleep(1.0)
            for attempt in range(tries):
                KINDS[kind](repo, attempt)
                with pytest.raises(InferenceServerException) as refused:
                    admin.load_model("recommend", headers=server.admin_http_headers)
                assert "load failed for model 'recommend'" in refused.value.message(), refused.value.message()
                assert server.is_alive(), f"tritonserver died on try {attempt + 1}:\n{server.log_tail()}"
                assert status(f"http://{server.http_url}/v2/models/recommend/ready") == 200
                assert status(f"{sup.health_url}/ready") == 200, sup.health()
            time.sleep(1.0)
        assert server.is_alive()
        failed = [r for r in load.records if r.code != "OK"]
        assert load.records and not failed, failed[:5]
        assert status(f"http://{server.http_url}/v2/health/ready") == 200  # not strict: the old version serves
    finally:
        admin.close()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_failing_load_keeps_the_old_version_serving(supervised, tiny_build, tmp_path: Path, kind: str) -> None:
    run_failing_loads(supervised, tiny_build, tmp_path, kind, tries=2)


@pytest.mark.faults
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_twenty_failing_loads(supervised, tiny_build, tmp_path: Path, kind: str) -> None:
    run_failing_loads(supervised, tiny_build, tmp_path, kind, tries=20)

"""Fixtures of the fault suite: `freshrec serve`'s supervisor around a real tritonserver on the
tiny build, each case with its own state copy (and, where it breaks files, its own repository)."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from freshrec.contract import served_models
from freshrec.server_ext.launcher import ServerOptions, find_free_ports
from freshrec.server_ext.supervisor import Supervisor
from tests.conftest import _SERVERS
from tests.triton_calls import users_of


def private_repository(src: Path, dst: Path) -> Path:
    """A copy of a repository a case may break: graphs hard-linked (the MiniLM graph is ~90 MB),
    everything else copied, so touching or renaming a file never reaches the shared build."""
    def copy(s: str, d: str) -> None:
        (os.link if s.endswith(".onnx") else shutil.copy2)(s, d)

    shutil.copytree(src, dst, copy_function=copy)
    return dst


def status(url: str) -> int | None:
    """HTTP status of a GET (None when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


@pytest.fixture
def supervised(request: pytest.FixtureRequest, tiny_build: dict[str, Any], fresh_state: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Supervisor]]:  # fmt: skip
    """Factory: ``supervised(engine="inprocess", repository=None, env=None, **options)`` starts a
    Supervisor (health port on a free port) on the tiny build's embedded repository over a private
    state copy, and drains it at teardown. The started supervisor has ``.users`` (40 user ids)."""
    started: list[Supervisor] = []
    request.node.stash[_SERVERS] = []

    def factory(engine: str = "inprocess", repository: Path | None = None, env: dict[str, str] | None = None,
                ready_timeout: float = 180.0, **options: Any) -> Supervisor:  # fmt: skip
        repo = Path(repository or tiny_build["repositories"]["embedded"])
        env = {"FRESHREC_STATE": f"sqlite:///{fresh_state}", "FRESHREC_ENGINE": engine, **(env or {})}
        g, h, m = find_free_ports(3)
        opts = ServerOptions(model_repository=repo, grpc_port=g, http_port=h, metrics_port=m, env=env, **options)
        sup = Supervisor(opts, served_models(engine), health_port=0, work_dir=tmp_path_factory.mktemp("triton"),
                         log=lambda msg: None)  # fmt: skip
        started.append(sup)
        request.node.stash[_SERVERS].append(sup.server)
        sup.start(ready_timeout)
        sup.users = users_of(fresh_state, 40)  # type: ignore[attr-defined]
        sup.state_path = fresh_state  # type: ignore[attr-defined]
        return sup

    yield factory
    for sup in started:
        sup.stop()

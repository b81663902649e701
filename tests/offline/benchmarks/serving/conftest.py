"""Input data generated once from the tiny build, for the input and run tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from freshrec.offline.benchmarks.serving.inputs import Dataset, generate_inputs
from freshrec.offline.benchmarks.serving.plan import Spec, plan


@pytest.fixture(scope="session")
def tiny_inputs(tiny_build: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, dict, list[Spec], Path]:
    repo = Path(tiny_build["repositories"]["embedded"])
    ds = Dataset.load(f"sqlite:///{tiny_build['build_dir'] / 'state.db'}", repo)
    specs = plan(smoke=True)
    out = tmp_path_factory.mktemp("bench_inputs")
    return ds, generate_inputs(ds, repo, specs, out, token="t0"), specs, repo

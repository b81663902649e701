"""A tiny build's repository and state, private to the module, with a week of new events stored
after the build (and one item added after it), ready for `freshrec update`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from freshrec.store import Event, open_store
from freshrec.store.sqlite import copy_sqlite
from tests.faults.conftest import private_repository, supervised  # noqa: F401 - the fault suite's server fixture
from tests.triton_calls import reference

NEW_ITEM = "new:film"
NEW_TEXT = "Galaxy Rangers (1998) Action|Adventure|Sci-Fi"


def add_new_week(tiny_build: dict[str, Any], state: Path, seed: int = 0) -> dict:
    """Stores what users did after the build: each user clicks 6 of their current top-20 (so the
    events follow the served model), a third of them the new item first. Returns what was added."""
    ref = reference(tiny_build, state)
    ref.upsert([NEW_ITEM], [NEW_TEXT])  # through the pipeline: text embedding, content, vector
    store = open_store(f"sqlite:///{state}")
    rng = np.random.default_rng(seed)
    t0 = 893_300_000.0  # after the ML-100K events of the tiny build
    events, fans = [], []
    users = sorted(store.user_ids())
    for j, user in enumerate(users):
        top = ref.recommend(user, k=20).item_ids
        picks = [top[i] for i in sorted(rng.choice(len(top), 6, replace=False))]
        if j % 3 == 0:
            picks = [NEW_ITEM, *[p for p in picks if p != NEW_ITEM][:5]]
            fans.append(user)
        for n, item in enumerate(picks):
            events.append(Event(user, item, "rate", t0 + 3600 * (n * 24 + j % 24), float(rng.integers(3, 6)), f"new:{user}:{n}"))
    store.add_events(events)
    store.close()
    ref.store.close()
    return {"events": len(events), "fans": fans, "users": users}


@pytest.fixture(scope="module")
def lifecycle_root(tiny_build: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{repo: a private copy of the embedded repository, state: a private state with a new week}."""
    root = tmp_path_factory.mktemp("lifecycle")
    repo = private_repository(Path(tiny_build["repositories"]["embedded"]), root / "repo")
    copy_sqlite(tiny_build["build_dir"] / "state.db", root / "state.db")
    added = add_new_week(tiny_build, root / "state.db")
    return {"repo": repo, "state": root / "state.db", "url": f"sqlite:///{root / 'state.db'}", **added}


@pytest.fixture
def copy_of(tmp_path: Path):
    """copy_of(lifecycle_root) -> a test's own copy of the repository and state."""

    made: list[Path] = []

    def make(root: dict[str, Any]) -> dict[str, Any]:
        d = tmp_path / f"copy{len(made)}"
        made.append(d)
        repo = private_repository(root["repo"], d / "repo")
        copy_sqlite(root["state"], d / "state.db")
        return {**root, "repo": repo, "state": d / "state.db", "url": f"sqlite:///{d / 'state.db'}"}

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def updated(lifecycle_root: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of `lifecycle_root` after one `freshrec update` (the gate's tolerance wide open:
    the tests are about the mechanics; the replay measures whether updates help)."""
    from freshrec.lifecycle.update import UpdateOptions, update

    root = tmp_path_factory.mktemp("updated")
    repo = private_repository(lifecycle_root["repo"], root / "repo")
    copy_sqlite(lifecycle_root["state"], root / "state.db")
    url = f"sqlite:///{root / 'state.db'}"
    card = update(UpdateOptions(repository=repo, state=url, tolerance=1.0, epochs=2, rerank_epochs=2))  # both stages
    return {**lifecycle_root, "repo": repo, "state": root / "state.db", "url": url, "card": card}

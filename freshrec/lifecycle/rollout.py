"""`freshrec rollout` / `rollback`: a version of the repository served by a running tritonserver,
through its repository API (explicit model-control mode, the admin key), with no failed request.

For each served model, in order (the towers first when they are served themselves, the public
models last, `recommend` at the end): the version policy in config.pbtxt is pinned to the new
version and the model is loaded. Triton 2.51 loads the new version while the old one serves, and
unloads the old one once the new one is ready; requests in flight finish on the version they
started on. A load that fails (a corrupt graph, an initialize that raises, out of memory) leaves
the old version serving: every model already switched is pinned back and loaded again, and the
rollout reports the failure. Towers served under Triton (the BLS engine) keep both versions
loaded until every pipeline model has switched: a pipeline model of version N calls the towers
of version N by number.

After a rollout, the item vectors of versions neither served nor the rollback target are
removed from the store.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from freshrec.contract import ONNX_MODELS, PIPELINE_MODELS
from freshrec.export.repository import pin_versions, read_card, read_settings, served_versions, versions
from freshrec.training.train import log

TOWERS = tuple(m.name for m in ONNX_MODELS)
# Writers before the reader: a new item written by version N+1's upsert_items gets N+1's vector,
# and N's recommend computes its own from the stored text embedding (Recommender.fill_missing).
PIPELINE_ORDER = ("upsert_items", "ingest_events", "recommend")
assert set(PIPELINE_ORDER) == {m.name for m in PIPELINE_MODELS}


class RolloutError(RuntimeError):
    """The new version was not served; the old one still is (the message says why)."""


@dataclass
class Triton:
    """The repository API of one tritonserver (HTTP), with the admin key."""

    url: str  # host:port of the HTTP endpoint
    key: str
    header: str = "freshrec-admin"
    timeout_s: float = 600.0

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(f"http://{self.url}{path}", data=data, method=method,
                                     headers={self.header: self.key, "Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout_s) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def index(self) -> list[dict]:
        code, text = self._call("POST", "/v2/repository/index", {})
        if code != 200:
            raise RolloutError(f"repository index: HTTP {code}: {text[:300]} (is the admin key right?)")
        return json.loads(text)

    def loaded(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for m in self.index():
            if m.get("state") == "READY" and m.get("version"):
                out.setdefault(m["name"], set()).add(int(m["version"]))
        return out

    def load(self, model: str) -> None:
        code, text = self._call("POST", f"/v2/repository/models/{model}/load")
        if code != 200:
            try:
                text = json.loads(text).get("error", text)
            except ValueError:
                pass
            raise RolloutError(f"load of {model}: {text[:500]}")

    def ready(self, model: str, version: int) -> bool:
        return self._call("GET", f"/v2/models/{model}/versions/{version}/ready", timeout=5)[0] == 200


def _switch(triton: Triton, repo: Path, model: str, pinned: list[int], done: list[tuple[str, bool]]) -> None:
    """Pins and loads one model, noting in `done` what must be undone: (model, whether Triton
    switched it; a failed load left the old version serving, and only its pin is restored)."""
    pin_versions(repo, model, pinned)
    done.append((model, False))
    triton.load(model)
    done[-1] = (model, True)


def rollout(repository: Path, triton: Triton, version: int | None = None, *, force: bool = False, state: str | None = None,
            keep_vectors: int = 1) -> dict:  # fmt: skip
    """Serves `version` (default: the newest in the repository) on `triton` (module docstring)."""
    repo = Path(repository)
    version = version or versions(repo)[-1]
    card = read_card(repo, version)
    if not card["gate"].get("passed", False) and not force:
        raise RolloutError(f"version {version} did not pass its gate ({card['gate']}); --force serves it anyway")
    old = served_versions(repo)
    t0 = time.time()
    loaded = triton.loaded()
    towers = [m for m in TOWERS if m in loaded]
    pipeline = [m for m in PIPELINE_ORDER if m in loaded]
    if not pipeline:
        raise RolloutError(f"the server at {triton.url} serves none of {', '.join(PIPELINE_ORDER)}")
    before = {m: served_versions(repo, m) for m in towers + pipeline}
    done: list[tuple[str, bool]] = []
    try:
        for m in towers:  # both versions while pipeline models of either may call them
            _switch(triton, repo, m, sorted(set(before[m]) | {version}), done)
        for m in pipeline:
            _switch(triton, repo, m, [version], done)
            if not triton.ready(m, version):
                raise RolloutError(f"{m} version {version} loaded but not ready")
        for m in towers:
            _switch(triton, repo, m, [version], done)
    except Exception as exc:
        log(f"rollout: {exc}; serving version {old} again")
        undone: list[tuple[str, bool]] = []
        for m, switched in reversed(done):
            if (m, True) in undone or (m, False) in undone:
                continue
            try:
                if switched:
                    _switch(triton, repo, m, before[m], undone)
                else:
                    pin_versions(repo, m, before[m])
                    undone.append((m, False))
            except Exception as again:  # noqa: BLE001 - report both, keep restoring
                log(f"rollout: restoring {m}: {again}")
        raise RolloutError(f"version {version} was not served: {exc}") from exc
    seconds = round(time.time() - t0, 2)
    log(f"rollout: version {version} serves {', '.join(pipeline + towers)} (was {old}) in {seconds}s")
    pruned = prune_vectors(repo, state, keep=[version, *old], keep_count=keep_vectors)
    return {"version": version, "previous": old, "models": pipeline + towers, "seconds": seconds, "pruned_vector_spaces": pruned}


def rollback(repository: Path, triton: Triton, state: str | None = None) -> dict:
    """Serves the served version's parent again (its gate is not asked again)."""
    repo = Path(repository)
    current = served_versions(repo)[-1]
    parent = read_card(repo, current).get("parent")
    if parent is None:
        raise RolloutError(f"version {current} has no parent to roll back to")
    return rollout(repo, triton, parent, force=True, state=state)


def prune_vectors(repo: Path, state: str | None, keep: list[int], keep_count: int = 1) -> list[int]:
    """Drops the stored vector spaces of versions other than `keep` (the served one and the
    previous `keep_count`, the rollback target). Space 1 (the build's) is never dropped."""
    from freshrec.store import open_store

    state = state or read_settings(repo)["deploy"]["state"]
    store = open_store(state)
    try:
        keep_set = set(keep[: 1 + keep_count])
        dropped = [s for s in sorted(store.vector_spaces()) if s != 1 and s not in keep_set]
        for s in dropped:
            store.drop_vectors(s)
        if dropped:
            log(f"rollout: item vectors of versions {dropped} removed from the store")
        return dropped
    finally:
        store.close()

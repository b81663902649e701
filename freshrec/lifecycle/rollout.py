"""`freshrec rollout` / `rollback`: a version of the repository served by a running tritonserver,
through its repository API (explicit model-control mode, the admin key), with no failed request.

For each served model, in order (the towers first when they are served themselves, the public
models last, `recommend` at the end), the model is loaded with its own config and the version
policy set to the new version (a config given with the load request). Triton 2.51 loads the new
version while the old one serves, and unloads the old one once the new one is ready; requests in
flight finish on the version they started on. A load that fails (a corrupt graph, an initialize
that raises, out of memory) leaves the old version serving: every model already switched is
loaded again at its old version, and the rollout reports the failure. Towers served under Triton
(the BLS engine) keep both versions loaded until every pipeline model has switched: a pipeline
model of version N calls the towers of version N by number.

Once every model serves the new version, its number is pinned in each config.pbtxt of the
repository (version_policy specific), so a restart serves it too; `--pin-only` pins without a
server, and a server run with `freshrec serve --follow-versions` (`follow`) rolls out whatever
version its repository pins: the way several pods sharing one repository volume all move to a
version an update job pinned. After a rollout the item vectors of versions neither served nor
the rollback target are removed from the store.
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
from freshrec.progress import log

TOWERS = tuple(m.name for m in ONNX_MODELS)
# Writers before the reader: a new item written by version N+1's upsert_items gets N+1's vector,
# and N's recommend computes its own from the stored text embedding (Recommender.fill_missing).
PIPELINE_ORDER = ("upsert_items", "ingest_events", "forget_user", "recommend")
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

    def load(self, model: str, versions: list[int] | None = None) -> None:
        """Loads `model`; with `versions`, its loaded config with the version policy set to them
        (the repository's config.pbtxt is not read)."""
        body = None
        if versions is not None:
            code, text = self._call("GET", f"/v2/models/{model}/config", timeout=10)
            if code != 200:
                raise RolloutError(f"config of {model}: HTTP {code}: {text[:300]}")
            config = json.loads(text)
            config["version_policy"] = {"specific": {"versions": [int(v) for v in sorted(set(versions))]}}
            body = {"parameters": {"config": json.dumps(config)}}
        code, text = self._call("POST", f"/v2/repository/models/{model}/load", body)
        if code != 200:
            try:
                text = json.loads(text).get("error", text)
            except ValueError:
                pass
            raise RolloutError(f"load of {model}: {text[:500]}")

    def ready(self, model: str, version: int) -> bool:
        return self._call("GET", f"/v2/models/{model}/versions/{version}/ready", timeout=5)[0] == 200


def rollout(repository: Path, triton: Triton, version: int | None = None, *, force: bool = False, state: str | None = None,
            keep_vectors: int = 1, pin: bool = True, prune: bool = True) -> dict:  # fmt: skip
    """Serves `version` (default: the newest in the repository) on `triton` (module docstring).
    `pin`: write the served version into the repository's configs afterwards; `prune`: remove
    the vectors of versions no longer needed from the store."""
    repo = Path(repository)
    version = version or versions(repo)[-1]
    card = read_card(repo, version)
    if not card["gate"].get("passed", False) and not force:
        raise RolloutError(f"version {version} did not pass its gate ({card['gate']}); --force serves it anyway")
    t0 = time.time()
    loaded = triton.loaded()
    towers = [m for m in TOWERS if m in loaded]
    pipeline = [m for m in PIPELINE_ORDER if m in loaded]
    if not pipeline:
        raise RolloutError(f"the server at {triton.url} serves none of {', '.join(PIPELINE_ORDER)}")
    before = {m: sorted(loaded[m]) for m in towers + pipeline}
    old = before["recommend"] if "recommend" in before else before[pipeline[0]]
    switched: list[str] = []
    try:
        for m in towers:  # both versions while pipeline models of either may call them
            triton.load(m, sorted(set(before[m]) | {version}))
            switched.append(m)
        for m in pipeline:
            triton.load(m, [version])
            switched.append(m)
            if not triton.ready(m, version):
                raise RolloutError(f"{m} version {version} loaded but not ready")
        for m in towers:
            triton.load(m, [version])
    except Exception as exc:
        log(f"rollout: {exc}; serving version {old} again")
        for m in reversed(list(dict.fromkeys(switched))):
            try:
                triton.load(m, before[m])
            except Exception as again:  # noqa: BLE001 - report both, keep restoring
                log(f"rollout: restoring {m}: {again}")
        raise RolloutError(f"version {version} was not served: {exc}") from exc
    seconds = round(time.time() - t0, 2)
    if pin:
        pin_all(repo, version)
    log(f"rollout: version {version} serves {', '.join(pipeline + towers)} (was {old}) in {seconds}s")
    pruned = prune_vectors(repo, state, keep=[version, *old], keep_count=keep_vectors) if prune else []
    return {"version": version, "previous": old, "models": pipeline + towers, "seconds": seconds, "pruned_vector_spaces": pruned}


def pin_all(repository: Path, version: int) -> None:
    """Pins `version` in the config of every model of the repository that has it."""
    repo = Path(repository)
    for m in (*TOWERS, *PIPELINE_ORDER):
        if (repo / m / str(version)).is_dir():
            pin_versions(repo, m, [version])


def follow(repository: Path, triton: Triton, stop, poll_s: float = 30.0) -> None:
    """Until `stop` (a threading.Event) is set: every `poll_s`, when the version the repository
    pins differs from the one `triton` serves, roll it out (a version whose rollout failed is not
    tried again until the pin changes)."""
    repo = Path(repository)
    failed: set[int] = set()
    while not stop.wait(poll_s):
        try:
            pinned = served_versions(repo)[-1]
            serving = triton.loaded().get("recommend", set())
            if serving and serving != {pinned} and pinned not in failed:
                log(f"follow: the repository pins version {pinned}, the server serves {sorted(serving)}: rolling out")
                rollout(repo, triton, pinned, force=True, pin=False, prune=False)
        except RolloutError as exc:
            failed.add(pinned)
            log(f"follow: {exc}; version {pinned} is not tried again")
        except Exception as exc:  # noqa: BLE001 - the follower outlives one bad poll
            log(f"follow: {exc!r}")


def rollback(repository: Path, triton: Triton | None, state: str | None = None) -> dict:
    """Serves the served version's parent again (its gate is not asked again); with no server,
    pins it (`freshrec rollback --pin-only`)."""
    repo = Path(repository)
    current = max(triton.loaded().get("recommend", set()) or served_versions(repo)) if triton else served_versions(repo)[-1]
    parent = read_card(repo, current).get("parent")
    if parent is None:
        raise RolloutError(f"version {current} has no parent to roll back to")
    if triton is None:
        return pin_only(repo, parent, state=state, force=True)
    return rollout(repo, triton, parent, force=True, state=state)


def pin_only(repository: Path, version: int | None = None, *, state: str | None = None, force: bool = False) -> dict:
    """Pins `version` in the repository without a server (servers that follow the repository
    roll it out themselves) and prunes the store's vectors as a rollout does."""
    repo = Path(repository)
    version = version or versions(repo)[-1]
    card = read_card(repo, version)
    if not card["gate"].get("passed", False) and not force:
        raise RolloutError(f"version {version} did not pass its gate ({card['gate']}); --force pins it anyway")
    old = served_versions(repo)
    pin_all(repo, version)
    log(f"pinned version {version} (was {old}); servers following the repository roll it out")
    return {"version": version, "previous": old, "pinned": True, "pruned_vector_spaces": prune_vectors(repo, state, keep=[version, *old])}


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

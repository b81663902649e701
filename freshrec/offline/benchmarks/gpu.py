"""The prepared GPU check: one script, under 10 minutes on one H100/H200 host.

    freshrec bench gpu [--build build] [--out docs/benchmarks/gpu] [--catalog-items 1000000] [--device gpu|cpu]

1. checks the host: nvidia-smi, torch with CUDA in this environment, onnxruntime's CUDA provider
   (a GPU instance refuses to load without the last two);
2. makes a GPU repository (instance groups KIND_GPU): `freshrec export --device gpu` of an existing
   build (seconds), else `freshrec build --device gpu` (minutes);
3. makes a synthetic catalog of `--catalog-items` items (`freshrec.offline.benchmarks.catalog_scale.scaled_state`,
   MiniLM on the first `--minilm-limit` texts, its surrogate for the rest);
4. serves it, checks the GPU path (Triton placed the instances on GPU 0; the Python-backend stubs
   hold CUDA contexts: nvidia-smi lists them) and runs the perf_analyzer sweep on `recommend`
   (freshrec.offline.benchmarks.serving, concurrency 1..64), writing `<out>/runs/gpu_catalog_<N>.json`, serving.md,
   summary.json and plots, plus `<out>/gpu_check.json`.

Every step prints its elapsed time; the script stops (exit 1) at the first failed check and
writes what it found. Nothing here has run on a GPU yet: until it does, the GPU figures are
unmeasured.

`--device cpu` rehearses the script on a machine without a GPU: every step runs (export, catalog,
serving, the path check, the sweep) on a CPU repository, the GPU checks are recorded but do not
stop it, and the verdict says the figures are CPU ones. A GPU host's time is scarce; the rehearsal
is how a change to this script is tried before one is used (tests/offline/benchmarks/test_gpu.py
runs it on a tiny build).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BUDGET_S = 570.0


def _sh(cmd: list[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return p.returncode, (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)


def host_check() -> dict:
    import onnxruntime as ort
    import torch

    rc, smi = _sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]) if shutil.which("nvidia-smi") else (127, "nvidia-smi not found")
    return {
        "nvidia_smi": smi if rc == 0 else f"failed: {smi[-300:]}",
        "gpu_visible": rc == 0 and bool(smi),
        "torch": torch.__version__,
        "torch_cuda": torch.cuda.is_available(),
        "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
    }


def gpu_path_check(server) -> dict:
    """Where Triton put the instances (its log) and which processes hold the GPU (nvidia-smi)."""
    log = server.handle.log_path.read_text(errors="replace")
    placed = sorted({line.split("TRITONBACKEND_ModelInstanceInitialize: ")[1].split('"')[0].strip()
                     for line in log.splitlines() if "TRITONBACKEND_ModelInstanceInitialize: " in line})  # fmt: skip
    rc, apps = _sh(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"])
    pids = set(server.handle.group_pids())
    on_gpu = [line for line in apps.splitlines() if line.split(",")[0].strip().isdigit() and int(line.split(",")[0]) in pids] if rc == 0 else []
    return {"instances": placed, "instances_on_gpu": [p for p in placed if "GPU" in p], "server_processes_on_gpu": on_gpu}


@dataclass
class GpuCheckOptions:
    """`freshrec bench gpu`'s options (freshrec/offline/benchmarks/cli.py says what each is)."""

    build: Path = Path("build")  # an existing CPU build is re-exported for the GPU (fast)
    work: Path = Path("build/bench-gpu")
    out: Path | None = None  # default: docs/benchmarks/gpu; <work>/rehearsal with device "cpu"
    catalog_items: int = 1_000_000
    minilm_limit: int = 10_000  # synthetic texts embedded by MiniLM itself (the rest: surrogate)
    concurrency: str = "1,4,16,64"
    index: str = "exact"  # exact: the GPU scans the item matrix (hnsw falls back to exact on GPU)
    requests: int | None = None  # measured requests per sweep run (default: the serving benchmark's)
    device: str = "gpu"  # "cpu": rehearse every step on a CPU repository (no GPU figures)


def run(a: GpuCheckOptions) -> int:
    """The check, step by step; 0 when the sweep ran, 1 when a step stopped it."""
    rehearsal = a.device == "cpu"
    a.out = a.out or (a.work / "rehearsal" if rehearsal else Path("docs/benchmarks/gpu"))
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "device": a.device, "steps": {}}

    def step(key: str, detail: str = "") -> None:
        report["steps"][key] = round(time.time() - t0, 1)
        print(f"== [{time.time() - t0:5.0f}s] {key}{': ' + detail if detail else ''}", flush=True)
        (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

    report["host"] = host_check()
    step("host checked", json.dumps(report["host"]))
    if not rehearsal and not (report["host"]["gpu_visible"] and report["host"]["torch_cuda"]):
        report["verdict"] = "no usable GPU here (nvidia-smi or CUDA torch missing): GPU figures stay unmeasured"
        step("stopped", report["verdict"])
        return 1
    if not rehearsal and "CUDAExecutionProvider" not in report["host"]["onnxruntime_providers"]:
        # The GPU instances would refuse to load (freshrec.server_ext.onnx_model): stop before the minutes of set-up.
        report["verdict"] = "onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu): GPU figures stay unmeasured"
        step("stopped", report["verdict"])
        return 1

    from freshrec.offline.benchmarks.serving.orchestrate import bench
    from freshrec.offline.benchmarks.serving.plan import BenchOptions
    from freshrec.offline.benchmarks.serving.server import Server

    repo_root = a.work / "repo"
    if (a.build / "build.json").exists():
        from freshrec.export.pipeline import export_build

        export_build(a.build, repo_root, device=a.device, replace_versions=True)  # its own scratch repository
        build = a.build
    else:
        from freshrec.config import ModelConfig
        from freshrec.training.build import BuildOptions
        from freshrec.training.build import build as run_build

        build = a.work / "build"
        run_build(BuildOptions(out=build, repository=repo_root, device=a.device), ModelConfig())
    step(f"{a.device.upper()} repository", str(repo_root / "embedded"))

    from freshrec.offline.benchmarks.catalog_scale import scaled_state

    dest = (a.work / f"state-{a.catalog_items}.db").resolve()
    if not Path(str(dest) + ".json").exists():
        scaled_state(build, a.catalog_items, dest, minilm_limit=a.minilm_limit)
    step("catalog", f"{a.catalog_items:,} items at {dest}")

    # The GPU path, checked on a server of its own before the sweep.
    srv = Server("gpu-check", (repo_root / "embedded").resolve(), f"sqlite:///{dest}", {"FRESHREC_INDEX": a.index})
    srv.start(a.work)
    try:
        from freshrec.client import FreshrecClient

        c = FreshrecClient(srv.handle.grpc_url, timeout_s=300)
        t1 = time.time()
        first = c.recommend("1", k=10)
        report["first_recommend_s"] = round(time.time() - t1, 2)
        report["first_recommend_items"] = first.item_ids
        report["gpu_path"] = gpu_path_check(srv)
    finally:
        srv.stop()
    step("path checked", json.dumps(report["gpu_path"]))
    if not rehearsal and not report["gpu_path"]["instances_on_gpu"]:
        report["verdict"] = "Triton placed no instance on the GPU; see the server log"
        step("stopped", report["verdict"])
        return 1
    if time.time() - t0 > BUDGET_S - 150:
        report["verdict"] = "out of time before the sweep"
        step("stopped", report["verdict"])
        return 1

    opts = BenchOptions(build=build, repository=(repo_root / "embedded").resolve(), out=a.out, catalog_items=a.catalog_items,
                        index=a.index, only=("recommend",), concurrency=tuple(int(x) for x in a.concurrency.split(",")),
                        work=a.work, keep_work=True, requests=a.requests, name=f"{a.device}_catalog_{a.catalog_items}")  # fmt: skip
    run = bench(opts)
    rec = run["results"]["recommend"]
    ok = [r["throughput"] for r in rec.values() if r["p99_ms"] <= 60.0]
    report["targets"] = {
        "c1_p99_ms": rec.get("1", {}).get("p99_ms"), "c1_p99_target_ms": 5.0,
        "best_throughput_p99_le_60ms": max(ok, default=0.0), "throughput_target": 5000.0,
    }  # fmt: skip
    report["verdict"] = "rehearsed on the CPU: these are CPU figures, the GPU ones stay unmeasured" if rehearsal else "measured"
    step("sweep done", json.dumps(report["targets"]))
    return 0


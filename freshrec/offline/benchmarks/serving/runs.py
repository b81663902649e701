"""One perf_analyzer run: its arguments, the command line as shown in the report, and a watchdog
that cuts off a run that stalls or hangs (logged, run once more); the jitter probe beside it."""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from freshrec.offline.benchmarks.jitter import Probe, attribute
from freshrec.offline.benchmarks.serving.pa_output import parse_csv, parse_profile_export, parse_stdout
from freshrec.offline.benchmarks.serving.plan import Spec
from freshrec.offline.benchmarks.serving.server import Server
from freshrec.offline.benchmarks.serving.stats import stage_delta, stage_stats, stats_delta, triton_stats


def pa_args(spec: Spec, concurrency: int, input_data: Path, grpc_url: str, csv_path: Path, composing: tuple[str, ...] = ()) -> list[str]:
    """perf_analyzer arguments (after the binary) for one run; `composing`: the BLS models the
    parent calls (only models that receive requests; none when the towers run in-process)."""
    args = [
        "-m", spec.model, "-i", "grpc", "-u", grpc_url,
        "--input-data", str(input_data),
        "--concurrency-range", str(concurrency),
        "--request-count", str(spec.requests),
        "--warmup-request-count", str(spec.warmup),
        "--percentile=99",
        "-f", str(csv_path), "--verbose-csv",
        "--profile-export-file", str(csv_path.with_suffix(".profile.json")),
    ]  # fmt: skip
    if composing:
        args += ["--bls-composing-models", ",".join(composing)]
    return args


def shown_command(args: list[str], out: Path) -> str:
    """The command line as a user reruns it by hand from the repository root (after
    `freshrec bench perf-analyzer` printed the perf_analyzer prefix for their machine)."""
    shown = []
    for a in args:
        p = Path(a)
        if p.is_absolute() and out in p.parents:
            a = str(Path(os.path.relpath(p, Path.cwd()))) if Path.cwd() in p.parents else str(p)
        shown.append(a)
    return "perf_analyzer " + " ".join(shlex.quote(a) for a in shown)


RUN_TIMEOUT_S = 60.0  # + 0.25 s per request: far beyond any run's length, short of hiding a hang
# perf_analyzer 2.60 now and then stalls after the server has answered every request it was to send
# (warm-up included): its worker threads have exited and it polls for records it never gets. A run
# still going this long after the server's statistics show all its requests answered has stalled.
STALL_GRACE_S = 15.0
POLL_S = 2.0  # how often a running run checks the server's statistics


def _answered(before: dict[str, dict[str, int]], server: Server, model: str) -> tuple[int, int]:
    """Requests of `model` the server completed and failed since `before`."""
    done = stats_delta(before, triton_stats(server.handle.grpc_url)).get(model, {})
    return int(done.get("requests", 0)), int(done.get("failures", 0))


def _watch(cmd: list[str], before: dict[str, dict[str, int]], server: Server, spec: Spec, timeout_s: float) -> tuple[str, str, int, str | None]:
    """Runs one perf_analyzer command to its end -> (stdout, stderr, exit code, None), or kills it
    when it has stalled or run past `timeout_s` -> (..., why)."""
    t0 = time.time()
    deadline, answered_at, why = t0 + timeout_s, None, None
    expected = spec.requests + spec.warmup
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=max(0.05, min(POLL_S, deadline - time.time())))
                    return out, err, proc.returncode, None
                except subprocess.TimeoutExpired:
                    pass
                now = time.time()
                if answered_at is None:
                    try:
                        if sum(_answered(before, server, spec.model)) >= expected:
                            answered_at = now
                    except Exception:  # noqa: BLE001 - the statistics are a stall check only; the deadline still holds
                        pass
                if now >= deadline:
                    why = f"did not finish in {timeout_s:.0f} s"
                elif answered_at is not None and now - answered_at >= STALL_GRACE_S:
                    why = f"still running {now - answered_at:.0f} s after the server had answered all {expected} requests ({now - t0:.0f} s in all)"
                if why:
                    proc.kill()
                    out, err = proc.communicate()
                    return out, err, proc.returncode, why
        except BaseException:  # interrupted: leave no perf_analyzer behind
            proc.kill()
            raise


def run_one(pa: list[str], spec: Spec, concurrency: int, input_data: Path, server: Server, raw: Path, tag: str = "",
            log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """One perf_analyzer run; returns the parsed CSV row, console report and Triton statistics."""
    raw.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.label}{tag}.c{concurrency}"
    csv_path = raw / f"{stem}.csv"
    engine = server.engine
    args = pa_args(spec, concurrency, input_data, server.handle.grpc_url, csv_path, spec.composing if engine == "bls" else ())
    # A run takes seconds. One that stalls (see STALL_GRACE_S) or outlasts this is cut off, logged
    # with what the server answered meanwhile and its log, and run once more.
    timeout_s = RUN_TIMEOUT_S + 0.25 * (spec.requests + spec.warmup)
    for attempt in (1, 2):
        # Read per attempt: a second attempt's statistics must not include the stalled first one.
        before, stages_before = triton_stats(server.handle.grpc_url), stage_stats(server.handle.metrics_url)
        t0 = time.time()
        with Probe() as probe:  # the machine's own slow bursts over the run (freshrec/jitter.py)
            out, err, returncode, stalled = _watch([*pa, *args], before, server, spec, timeout_s)
        if stalled is None:
            break
        kept = raw / f"{stem}.stalled{attempt}.log"
        try:  # did the server answer what it was sent? (perf_analyzer's count includes the warm-up)
            done, failed = _answered(before, server, spec.model)
            answered = f"the server completed {done} and failed {failed} {spec.model} requests meanwhile"
        except Exception as e:  # noqa: BLE001 - a diagnostic only
            answered = f"the server's statistics could not be read: {e}"
        kept.write_text(out + err + f"\n--- perf_analyzer {stalled}; {answered} ---\n--- tritonserver log ---\n" + server.handle.log_tail(60))
        for leftover in (csv_path, csv_path.with_suffix(".profile.json")):
            leftover.unlink(missing_ok=True)
        if attempt == 2:
            raise RuntimeError(f"perf_analyzer stalled on {spec.label} at concurrency {concurrency} twice ({stalled}); see {kept}")
        log(f"  {spec.label} c={concurrency}: perf_analyzer {stalled} ({answered}); its output and the server log "
            f"are in {kept}; running it again")  # fmt: skip
    seconds = time.time() - t0
    after, stages_after = triton_stats(server.handle.grpc_url), stage_stats(server.handle.metrics_url)
    (raw / f"{stem}.log").write_text(out + err)
    if returncode != 0 or not csv_path.exists():
        tail = "\n".join((out + err).strip().splitlines()[-25:])
        raise RuntimeError(f"perf_analyzer failed on {spec.label} at concurrency {concurrency} (exit {returncode}):\n{tail}\n"
                           f"--- tritonserver log ---\n{server.handle.log_tail(30)}")  # fmt: skip
    row = next(r for r in parse_csv(csv_path.read_text()) if r["concurrency"] == concurrency)
    profile_path = csv_path.with_suffix(".profile.json")
    profile = parse_profile_export(profile_path.read_text())
    profile_path.unlink()  # per-request timestamps and outputs: large, and summarised here
    console = parse_stdout(out).get(concurrency, {})
    server_stats = stats_delta(before, after)
    failures = sum(v["failures"] for v in server_stats.values())
    if failures:
        raise RuntimeError(f"{spec.label} at concurrency {concurrency}: {failures} failed requests on the server; see {raw / (stem + '.log')}")
    result = {
        "model": spec.model,
        "concurrency": concurrency,
        "requests": spec.requests,
        "warmup": spec.warmup,
        "seconds": round(seconds, 1),
        "throughput": profile["throughput"],
        "throughput_perf_analyzer": row["throughput"],
        "measured_seconds": profile["seconds"],
        "p50_ms": row["p50_us"] / 1e3,
        "p90_ms": row["p90_us"] / 1e3,
        "p95_ms": row.get("p95_us", math.nan) / 1e3,
        "p99_ms": row["p99_us"] / 1e3,
        "csv": row,
        "perf_analyzer_server": console.get("server", {}),
        "perf_analyzer_composing": console.get("composing", {}),
        "server": server_stats,
        "engine": engine,
        "stages": stage_delta(stages_before, stages_after),
        "machine_bursts": attribute(profile["spans"], probe.samples),
        "attempts": attempt,
        "command": shown_command(args, raw.parent),
        "input_data": str(input_data),
    }
    srv, mb = server_stats.get(spec.model, {}), result["machine_bursts"]
    log(f"  {spec.label:16s} c={concurrency:<2d} {result['throughput']:8.1f}/s  p50 {result['p50_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:7.2f} ms  queue+overhead {srv.get('queue_plus_overhead_ms', math.nan):.3f} ms  ({seconds:.0f}s)"
        + (f"  slowest 1% in machine bursts: {mb['slowest_1pct_in_bursts']}/{mb['slowest_1pct']}" if mb else ""))  # fmt: skip
    return result

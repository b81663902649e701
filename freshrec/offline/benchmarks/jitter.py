"""The machine's own slow bursts, measured beside a benchmark run.

On a shared virtual machine the same instructions sometimes take many times longer for a tenth
of a second, on every vCPU at once: the host, not the program. A benchmark's p99 at concurrency 1
is the few slowest requests of a run, so such bursts decide it. This probe times a fixed piece of
pure-Python work every `interval_ms` in its own process and records the work's *thread CPU time*:
being preempted by the benchmark's own processes stretches wall time but not CPU time, so only
the vCPU itself running slower counts. A sample that took `factor` times the median CPU time marks
a slow burst; `attribute` then says which requests of a perf_analyzer run overlapped one.

    freshrec bench jitter --seconds 20          # prints the bursts seen on this machine

Cost: about 0.2 ms of one core every 20 ms (1%), the same for every run it watches.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

WORK_LOOPS = 2000  # about 0.1-0.2 ms of CPython on a current x86 core
INTERVAL_MS = 20.0  # bursts last ~100 ms on the machines measured: several samples land in each
FACTOR = 3.0  # a sample this many times the median CPU time is slow


def _work() -> int:
    x = 0
    for i in range(WORK_LOOPS):
        x += i
    return x


def sample(seconds: float, interval_ms: float = INTERVAL_MS, stop: list[bool] | None = None) -> list[tuple[int, int, int]]:
    """(start, end) wall-clock ns since the epoch and the work's thread CPU ns, one per interval."""
    out: list[tuple[int, int, int]] = []
    t_end, parent = time.monotonic() + seconds, os.getppid()
    while time.monotonic() < t_end and not (stop and stop[0]) and os.getppid() == parent:  # ends with its parent
        s, c = time.time_ns(), time.thread_time_ns()
        _work()
        out.append((s, time.time_ns(), time.thread_time_ns() - c))
        time.sleep(interval_ms / 1e3)
    return out


def median_cpu_ns(samples: list[tuple[int, int, int]]) -> float:
    """The baseline: the median CPU time of the fixed work."""
    return float(np.median([c for _, _, c in samples])) if samples else math.nan


def bursts(samples: list[tuple[int, int, int]], factor: float = FACTOR) -> list[dict[str, float]]:
    """Slow bursts: runs of consecutive slow samples, each widened to the neighbouring fast
    samples (the machine may have been slow in the unobserved gap), with the worst slowdown."""
    if len(samples) < 10:
        return []
    med = median_cpu_ns(samples)
    slow = [c > factor * med for _, _, c in samples]
    out: list[dict[str, float]] = []
    i = 0
    while i < len(samples):
        if not slow[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(samples) and slow[j + 1]:
            j += 1
        start = samples[i - 1][1] if i > 0 else samples[i][0]
        end = samples[j + 1][0] if j + 1 < len(samples) else samples[j][1]
        out.append({"start_ns": start, "end_ns": end, "worst": max(c for _, _, c in samples[i : j + 1]) / med})
        i = j + 1
    return out


def attribute(requests: list[tuple[int, int]], samples: list[tuple[int, int, int]], factor: float = FACTOR) -> dict[str, Any]:
    """How a run's tail relates to the machine's bursts.

    Args:
        requests: (send, last response) wall-clock ns of each measured request (perf_analyzer's
            `--profile-export-file` timestamps).
        samples: the probe's samples over the same time.

    Burst counts and the time in bursts are over all the samples: the whole run, perf_analyzer's
    start-up and warm-up included.
    """
    if not requests or len(samples) < 10:
        return {}
    b = bursts(samples, factor)
    lat = np.array([(e - s) / 1e6 for s, e in requests])
    hit = np.array([any(w["start_ns"] < e and s < w["end_ns"] for w in b) for s, e in requests], dtype=bool)
    n_tail = max(1, math.ceil(0.01 * len(requests)))
    tail = np.argsort(-lat)[:n_tail]
    span_ns = samples[-1][1] - samples[0][0]
    slow_ns = sum(w["end_ns"] - w["start_ns"] for w in b)
    outside = lat[~hit]
    return {
        "probe_samples": len(samples),
        "probe_median_us": median_cpu_ns(samples) / 1e3,
        "bursts": len(b),
        "bursts_per_minute": len(b) / (span_ns / 60e9) if span_ns > 0 else 0.0,
        "slow_fraction": slow_ns / span_ns if span_ns > 0 else 0.0,
        "worst_slowdown": max((w["worst"] for w in b), default=1.0),
        "requests": len(requests),
        "requests_in_bursts": int(hit.sum()),
        "slowest_1pct": n_tail,
        "slowest_1pct_in_bursts": int(hit[tail].sum()),
        "p99_ms": float(np.percentile(lat, 99)),
        "p99_outside_bursts_ms": float(np.percentile(outside, 99)) if len(outside) else math.nan,
    }


class Probe:
    """`with Probe() as p: ...` samples in a separate process for the block; then `p.samples`."""

    def __init__(self, interval_ms: float = INTERVAL_MS, max_seconds: float = 3600.0) -> None:
        self.interval_ms, self.max_seconds = interval_ms, max_seconds
        self.samples: list[tuple[int, int, int]] = []

    def __enter__(self) -> "Probe":
        code = f"from freshrec.offline.benchmarks.jitter import probe_process; probe_process({self.max_seconds!r}, {self.interval_ms!r})"
        argv = [sys.executable, "-c", code]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self._proc.stdout.readline().strip() != "sampling":  # its SIGTERM handler is in place
            self._proc.kill()
            raise RuntimeError(f"the jitter probe did not start: {self._proc.communicate()[1].strip()[-500:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.send_signal(signal.SIGTERM)
        try:
            out, err = self._proc.communicate(timeout=30)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
        if self._proc.returncode != 0:
            raise RuntimeError(f"the jitter probe failed (exit {self._proc.returncode}): {err.strip()[-500:]}")
        self.samples = [tuple(s) for s in json.loads(out)["samples"]]


def probe_process(seconds: float, interval_ms: float) -> None:
    """The body of Probe's process: prints "sampling" once its SIGTERM handler is in place, samples
    until SIGTERM (or `seconds`), then prints the samples as JSON."""
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    print("sampling", flush=True)  # Probe waits for this line before the run it watches starts
    samples = sample(seconds, interval_ms, stop)
    print(json.dumps({"interval_ms": interval_ms, "samples": samples}))


def report(seconds: float = 20.0, interval_ms: float | None = None) -> None:
    """`freshrec bench jitter`: samples for `seconds` (or until SIGTERM) and prints the bursts."""
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    samples = sample(seconds, interval_ms or INTERVAL_MS, stop)
    b = bursts(samples)
    span = (samples[-1][1] - samples[0][0]) / 1e9 if samples else 0.0
    med = median_cpu_ns(samples) / 1e3
    print(f"{len(samples)} samples over {span:.1f} s, median {med:.0f} us of CPU per sample; "
          f"{len(b)} slow bursts (> {FACTOR:g}x the median):")  # fmt: skip
    t0 = samples[0][0] if samples else 0
    for w in b:
        print(f"  at {(w['start_ns'] - t0) / 1e9:7.2f} s  {(w['end_ns'] - w['start_ns']) / 1e6:6.0f} ms  up to {w['worst']:.1f}x")

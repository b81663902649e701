"""Replay with model updates (`freshrec eval --parts updates`): the prequential replay of
`replay.py` (the world as of T0, then every later event in time order, each scored before it is
applied) where the model is also fine-tuned as the events arrive, through `freshrec update`
itself, every simulated day and every simulated week, against the same replay with frozen
weights (real-time state) and with frozen state.

A passed update is served from the next request on: the in-process pipeline (`Recommender` over
the new version's PyTorch checkpoints, reading the new version's vectors from the store), the
same code the served version runs; the served rollout itself is tested and benchmarked on its
own (`tests/lifecycle`, `freshrec bench rollout`). Each seed has its own T0 build.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from freshrec.config import DeployConfig, ModelConfig
from freshrec.offline.evaluation.replay import PipelineTarget, ReplayEvent, replay_stream, run_replay, windowed
from freshrec.training.metrics import rank_metrics
from freshrec.progress import log

DAY = 86400.0
SCHEDULES = {"daily": DAY, "weekly": 7 * DAY}


def private_repository(src: Path, dst: Path) -> Path:
    """A copy of a repository that updates may add versions to: graphs hard-linked, the rest copied."""
    import os
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=lambda s, d: (os.link if s.endswith(".onnx") else shutil.copy2)(s, d))
    return dst


class UpdatingTarget(PipelineTarget):
    """The in-process pipeline over a private repository and state, updated by `freshrec update`
    each time the replay's clock passes another `every_s` seconds of event time."""

    def __init__(self, build_dir: Path, repository: Path, work: Path, every_s: float, seed: int) -> None:
        super().__init__(build_dir, work / "state.db")
        self.repo = private_repository(repository, work / "repo")
        self.url = f"sqlite:///{work / 'state.db'}"
        self.every_s, self.seed = every_s, seed
        self.next_at: float | None = None
        self.version = 1
        self.updates: list[dict] = []

    def clock(self, timestamp: float) -> None:
        if self.next_at is None:
            self.next_at = timestamp + self.every_s
        while timestamp >= self.next_at:
            self._update(self.next_at)
            self.next_at += self.every_s

    def _update(self, at: float) -> None:
        from freshrec.lifecycle.update import NothingToLearn, UpdateOptions, update

        t0 = time.time()
        try:
            card = update(UpdateOptions(repository=self.repo, state=self.url, parent=self.version, seed=self.seed))
        except NothingToLearn as exc:
            self.updates.append({"at": at, "skipped": str(exc), "seconds": round(time.time() - t0, 1)})
            return
        g = card["gate"]
        self.updates.append({"at": at, "version": card["version"], "passed": g["passed"], "seconds": card["seconds"],
                             "train_seconds": card["training"]["seconds"], "events": card["data"]["events"],
                             "gate_parent": g["parent"]["ndcg10"], "gate_candidate": g["candidate"]["ndcg10"]})  # fmt: skip
        if g["passed"]:
            self._serve(card["version"])

    def _serve(self, version: int) -> None:
        from freshrec.serving.engines import load_reference
        from freshrec.serving.pipeline import Recommender

        engine, tokenizer, cfg = load_reference(self.repo / "recommend" / str(version))
        self.rec = Recommender(self.rec.store, engine, tokenizer, cfg, DeployConfig(version=version), popular_ttl_s=0.0)
        self.version = version


def updates_section(ds, cfg: ModelConfig, opts, work: Path, build_once) -> dict:
    """`build_once`: eval's build-or-reuse (a T0 build per seed)."""
    from freshrec.training.build import BuildOptions
    from freshrec.training.data import global_time_split

    import torch

    # One intra-op thread, as each served pipeline instance runs (DeployConfig.threads): the
    # replay's small per-request ops are 16x slower with two spinning threads on a busy 2-core machine.
    torch.set_num_threads(1)
    t0 = global_time_split(ds, opts.quantile)
    stream: list[ReplayEvent] = replay_stream(ds, t0, opts.replay_limit)
    days = (stream[-1].timestamp - stream[0].timestamp) / DAY if stream else 0.0
    log(f"updates: {len(stream)} events over {days:.1f} days after T0; seeds {list(opts.seeds)}")
    seeds = {}
    for seed in opts.seeds:
        base = work / f"updates_seed{seed}"
        done = base / f"result-{opts.replay_limit or 'all'}.json"
        if done.exists():  # a seed finished by an earlier run of this part (a long part resumes)
            seeds[seed] = json.loads(done.read_text())
            log(f"updates seed {seed}: reusing {done}")
            continue
        cfg_s = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        report = build_once(BuildOptions(out=base / "build", repository=base / "repo", events=opts.events, items=opts.items,
                                         max_users=opts.max_users, until=t0, serve_state="all"), cfg_s)  # fmt: skip
        build_dir, repo = base / "build", Path(report["repositories"]["embedded"])
        runs, updates = {}, {}
        for name, every in (("frozen_state", None), ("frozen_weights", None), *SCHEDULES.items()):
            run_dir = base / name
            run_dir.mkdir(parents=True, exist_ok=True)
            if every is None:
                target = PipelineTarget(build_dir, run_dir / "state.db")
                clock = None
            else:
                target = UpdatingTarget(build_dir, repo, run_dir, every, seed)
                clock = target.clock
            result = run_replay(f"seed {seed} {name}", stream, target, realtime=name != "frozen_state", log=log, clock=clock)
            target.close()
            m = rank_metrics(result.ranks, (10,))[10]
            runs[name] = {"ndcg@10": m["ndcg"], "hr@10": m["hr"], "windows": windowed(result.ranks, stream, opts.windows),
                          "seconds": result.seconds}  # fmt: skip
            if every is not None:
                updates[name] = target.updates
                passed = [u for u in target.updates if u.get("passed")]
                runs[name].update(updates=len(target.updates), passed=len(passed),
                                  update_seconds_mean=float(np.mean([u["seconds"] for u in target.updates if "version" in u] or [0.0])))
            log(f"updates seed {seed} {name}: NDCG@10 {m['ndcg']:.4f} HR@10 {m['hr']:.4f} ({result.seconds:.0f}s)")
        seeds[seed] = {"runs": runs, "updates": updates, "build_test_metrics": report["test_metrics"]}
        done.write_text(json.dumps(seeds[seed], default=float))
    names = ("frozen_state", "frozen_weights", *SCHEDULES)
    mean = {n: float(np.mean([seeds[s]["runs"][n]["ndcg@10"] for s in seeds])) for n in names}
    ratio = {n: [seeds[s]["runs"][n]["ndcg@10"] / seeds[s]["runs"]["frozen_weights"]["ndcg@10"] for s in seeds] for n in SCHEDULES}
    return {"t0": t0, "events": len(stream), "days": days, "seeds": {str(k): v for k, v in seeds.items()}, "mean_ndcg@10": mean,
            "ratio_to_frozen_weights": ratio}  # fmt: skip

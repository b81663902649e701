"""`freshrec bench <what>`: every benchmark behind one command (freshrec/cli.py adds it).

The arguments are declared here and are cheap to import; each command imports its benchmark only
when it runs (the index benchmark pulls in torch and faiss, the serving one numpy and the exporter).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# name -> what it measures (`freshrec bench` lists them)
BENCHMARKS = {
    "serving": "perf_analyzer over gRPC against the served build -> docs/benchmarks (serving.md, summary.json, plots)",
    "index": "exact vs approximate retrieval at 10k/100k/1M items -> docs/benchmarks (index.md, index.json, plot)",
    "stores": "SQLite vs Redis state store through the served gRPC API -> docs/benchmarks (state_stores.md/.json)",
    "explain": "recommend with and without the explanation output, side by side, through gRPC -> docs/benchmarks (explain.md/.json)",
    "rollout": "update, rollout, rollback and a failing rollout under perf_analyzer load -> docs/benchmarks (rollout.md/.json)",
    "training": "`freshrec build` on 1 and on N processes (torchrun, DDP) side by side: time and test NDCG@10 -> docs/benchmarks (training.md/.json)",
    "capacity": "pods, memory, Redis shards for 10M/100M items at 10k recommendations/s, as arithmetic from the committed figures -> docs/benchmarks/capacity.md",
    "gpu": "the prepared GPU check (H100/H200): GPU repository, 1M-item catalog, path check, recommend sweep",
    "jitter": "the machine's own slow bursts, sampled for a while and printed",
    "perf-analyzer": "fetch and verify perf_analyzer 2.60.0 and print the command prefix that runs it here",
}
EPILOG = """\
`freshrec bench` alone prints this list and exits with status 2: it runs nothing. The serving load
test that `freshrec bench [options]` used to run is `freshrec bench serving [options]`.
`freshrec bench WHAT --help` shows a benchmark's options."""


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers `bench` and its benchmarks on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "bench", help="benchmarks: serving (perf_analyzer), index, stores, rollout, training, capacity, gpu, jitter, perf-analyzer",
        description="Benchmarks of the served system and its parts, and the tools they use.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.set_defaults(func=lambda _a: _list(p))
    what = p.add_subparsers(dest="what", metavar="WHAT", title="benchmarks")

    s = what.add_parser("serving", help=BENCHMARKS["serving"],
                        description="The served models under load, measured with the real perf_analyzer over gRPC "
                                    "(freshrec.offline.benchmarks.serving says what each step does).")  # fmt: skip
    serving_arguments(s)
    s.set_defaults(func=_serving)

    s = what.add_parser("index", help=BENCHMARKS["index"], description=BENCHMARKS["index"])
    s.add_argument("--build", type=Path, default=Path("build"))
    s.add_argument("--sizes", default=None, help="comma-separated catalog sizes (default 10000,100000,1000000)")
    s.add_argument("--queries", type=int, default=300)
    s.add_argument("--source", choices=("build", "random"), default="build",
                   help="build: the build's towers over synthetic catalogs; random: clustered random vectors (a smoke run)")  # fmt: skip
    s.add_argument("--states", type=Path, default=None, help="where scaled states go (default <build>/scaled)")
    s.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    s.add_argument("--append", action="store_true", help="keep other (method, size) rows of an existing index.json")
    s.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    s.add_argument("--render", action="store_true", help="only rewrite index.md and the plot from --out's index.json")
    s.set_defaults(func=_index)

    s = what.add_parser("stores", help=BENCHMARKS["stores"], description=BENCHMARKS["stores"])
    s.add_argument("--build", type=Path, default=Path("build"))
    s.add_argument("--repository", type=Path, default=Path("model_repository/embedded"))
    s.add_argument("--calls", type=int, default=200)
    s.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    s.set_defaults(func=_stores)

    s = what.add_parser("explain", help=BENCHMARKS["explain"], description=BENCHMARKS["explain"])
    s.add_argument("--build", type=Path, default=Path("build"))
    s.add_argument("--repository", type=Path, default=Path("model_repository/embedded"))
    s.add_argument("--calls", type=int, default=300, help="rounds: one request without and one with the explanation each")
    s.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    s.set_defaults(func=_explain)

    s = what.add_parser("rollout", help=BENCHMARKS["rollout"],
                        description="Failed requests and latency of recommend while versions are rolled out, rolled back and a "
                                    "broken one refused, and the update's time to serving "
                                    "(freshrec.offline.benchmarks.rollout says what each step does).")  # fmt: skip
    s.add_argument("--build", type=Path, default=Path("build"), help="a `freshrec build` output (state.db, build.json)")
    s.add_argument("--repository", type=Path, help="the served repository (default: the build's embedded one)")
    s.add_argument("--work", type=Path, default=Path("build/bench/rollout"), help="private copies, inputs, perf_analyzer's logs (kept)")
    s.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="where rollout.md and rollout.json go")
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--smoke", action="store_true", help="small counts, one rollout and the failing one (the test)")
    s.add_argument("--requests", type=int, help="steady-state requests (default 3000; smoke 200)")
    s.add_argument("--run-seconds", type=float, help="each perf_analyzer run under rollouts lasts about this long (default 5; smoke 3): "
                   "perf_analyzer aborts a run at its first failed request, losing the run's latencies")
    s.add_argument("--gap", type=float, help="seconds between rollout steps (default 5; smoke 1)")
    s.add_argument("--epochs", type=int, help="the update's fine-tuning passes (default: the update's; smoke 1)")
    s.add_argument("--tolerance", type=float, help="the update's gate tolerance (default: the update's)")
    s.set_defaults(func=_rollout)

    s = what.add_parser("training", help=BENCHMARKS["training"],
                        description="Whole builds of the same data and seed on 1 process and on N under torchrun, one after "
                                    "the other: wall and training time, test metrics, and one process's seed spread from "
                                    "the committed evaluation (freshrec.offline.benchmarks.training).")  # fmt: skip
    s.add_argument("--processes", default="1,2", help="comma-separated process counts (1 = plain `freshrec build`)")
    s.add_argument("--work", type=Path, default=Path("build/bench/training"), help="one build per run goes here (kept)")
    s.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="where training.md and training.json go")
    s.add_argument("--tiny", action="store_true", help="tiny models (a smoke run)")
    s.add_argument("--max-users", type=int, help="keep only the first N users (a smoke run)")
    s.add_argument("--render", action="store_true", help="only rewrite training.md from --out's training.json")
    s.set_defaults(func=_training)

    s = what.add_parser("capacity", help=BENCHMARKS["capacity"],
                        description="A capacity model: from the figures the other benchmarks committed (nothing is measured), "
                                    "what a catalog of N items at a recommendation and event rate needs: pods, memory per pod "
                                    "per index kind, Redis memory and shards, GPUs where a GPU figure exists; every derived "
                                    "figure with its arithmetic and what it rests on (freshrec.offline.benchmarks.capacity).")  # fmt: skip
    s.add_argument("--figures", type=Path, default=Path("docs/benchmarks"), help="where summary.json, index.json, state_stores.json are")
    s.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="where capacity.md goes")
    s.add_argument("--items", default="10000000,100000000", help="comma-separated catalog sizes")
    s.add_argument("--recommendations-per-s", type=float, help="default 10000")
    s.add_argument("--events-per-s", type=float, help="default 10000, one event per ingest_events request")
    s.set_defaults(func=_capacity)

    s = what.add_parser("gpu", help=BENCHMARKS["gpu"],
                        description="The prepared GPU check: one script, under 10 minutes on one H100/H200 host "
                                    "(freshrec.offline.benchmarks.gpu says what each step does).")  # fmt: skip
    s.add_argument("--build", type=Path, default=Path("build"), help="an existing CPU build is re-exported for the GPU (fast)")
    s.add_argument("--work", type=Path, default=Path("build/bench-gpu"))
    s.add_argument("--out", type=Path, default=None, help="default: docs/benchmarks/gpu; <work>/rehearsal with --device cpu")
    s.add_argument("--catalog-items", type=int, default=1_000_000)
    s.add_argument("--minilm-limit", type=int, default=10_000, help="synthetic texts embedded by MiniLM itself (the rest: surrogate)")
    s.add_argument("--concurrency", default="1,4,16,64")
    s.add_argument("--index", default="exact", help="exact: the GPU scans the item matrix (hnsw falls back to exact on GPU)")
    s.add_argument("--requests", type=int, default=None, help="measured requests per sweep run (default: the serving benchmark's)")
    s.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="cpu: rehearse every step on a CPU repository (no GPU figures)")
    s.set_defaults(func=_gpu)

    s = what.add_parser("jitter", help=BENCHMARKS["jitter"],
                        description="The machine's own slow bursts (freshrec.offline.benchmarks.jitter): a fixed piece of "
                                    "work timed in thread CPU time at a fixed interval; the slow bursts are printed.")  # fmt: skip
    s.add_argument("--seconds", type=float, default=20.0, help="sample for this long")
    s.add_argument("--interval-ms", type=float, default=None, help="one sample every this many ms (default 20)")
    s.set_defaults(func=_jitter)

    s = what.add_parser("perf-analyzer", help=BENCHMARKS["perf-analyzer"], description=BENCHMARKS["perf-analyzer"])
    s.set_defaults(func=_perf_analyzer)


def _list(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# -- serving ---------------------------------------------------------------------------------------
def serving_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--build", type=Path, default=Path("build"), help="build folder (build.json, state.db)")
    p.add_argument("--repository", type=Path, help="model repository (default: the build's embedded one)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="serving.md, summary.json, plots, inputs/, raw/")
    p.add_argument("--smoke", action="store_true", help="CI version: tiny build if none, concurrency 1, a few dozen requests")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--state", help="serve this state instead of the build's (sqlite:///... is copied first)")
    g.add_argument("--catalog-items", type=int, help="bench recommend on a synthetic catalog of N items (freshrec.offline.benchmarks.catalog_scale)")
    p.add_argument("--index", choices=("exact", "sq8", "hnsw", "auto"), help="retrieval index (FRESHREC_INDEX for the server)")
    p.add_argument("--index-cache", choices=("shared", "off"), default="shared",
                   help="the server's index cache: shared (a folder in the work folder: the instances map one copy of the "
                        "item matrices and graphs) or off (each instance keeps its own copies)")  # fmt: skip
    p.add_argument("--only", default="", help="comma-separated models/labels, e.g. recommend,ingest_events")
    p.add_argument("--concurrency", default="", help="recommend's concurrency levels (default 1,2,4,8)")
    p.add_argument("--requests", type=int, help="measured requests per perf_analyzer run (default: 2000 for recommend, see plan())")
    p.add_argument("--compare", action="store_true", help="add the side-by-side tuning study (TUNING_VARIANTS: BLS vs in-process towers, batching delay)")
    p.add_argument("--work", type=Path, help="work folder (kept; a catalog state built there is reused); default a temporary folder, removed")
    p.add_argument("--assemble", action="store_true", help="only re-render serving.md/summary.json/plots from <out>/runs/*.json")
    p.add_argument("--name", help="run name under <out>/runs/ (default: main, or catalog_<N>[_<index>][_own_copies])")


def serving_options(a: argparse.Namespace):
    """The BenchOptions of `freshrec bench serving`'s arguments."""
    from freshrec.offline.benchmarks.serving import BenchOptions

    only = tuple(x for x in a.only.split(",") if x)
    if a.catalog_items and not only:
        only = ("recommend",)
    return BenchOptions(
        build=a.build, repository=a.repository, out=a.out, smoke=a.smoke, state=a.state, catalog_items=a.catalog_items,
        index=a.index, index_cache=a.index_cache, only=only, concurrency=tuple(int(x) for x in a.concurrency.split(",") if x) or None,
        compare=a.compare, work=a.work, keep_work=a.work is not None, name=a.name, requests=a.requests,
    )  # fmt: skip


def _serving(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.perf_analyzer import PerfAnalyzerUnavailable
    from freshrec.offline.benchmarks.serving import assemble, bench

    opts = serving_options(a)
    try:
        if a.assemble:
            assemble(opts.out.resolve())
        else:
            bench(opts)
    except PerfAnalyzerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = json.loads((opts.out / "summary.json").read_text())
    for t in summary.get("targets", []):
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']:.3f}")
    return 0


# -- the others ------------------------------------------------------------------------------------
def _index(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks import index

    if a.render:
        index.render(a.out)
        return 0
    sizes = [int(s.replace("_", "")) for s in a.sizes.split(",") if s] if a.sizes else list(index.DEFAULT_SIZES)
    only = set(a.methods.split(",")) if a.methods else None
    index.run(sizes, a.queries, a.source, a.build, a.out, a.states, only, a.append)
    return 0


def _stores(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.stores import run

    run(a.build, a.repository, a.calls, a.out)
    return 0


def _explain(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.explain import run

    run(a.build, a.repository, a.calls, a.out)
    return 0


def _rollout(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.perf_analyzer import PerfAnalyzerUnavailable
    from freshrec.offline.benchmarks.rollout import RolloutBenchOptions, main_print, run

    opts = RolloutBenchOptions(build=a.build, repository=a.repository, work=a.work, out=a.out, concurrency=a.concurrency, smoke=a.smoke,
                               requests=a.requests, run_s=a.run_seconds, gap_s=a.gap, epochs=a.epochs,
                               **({} if a.tolerance is None else {"tolerance": a.tolerance}))  # fmt: skip
    try:
        report = run(opts)
    except PerfAnalyzerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    main_print(report)
    return 0 if report["as_expected"] else 1


def _training(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.training import rerender, run

    if a.render:
        result = rerender(a.out)
    else:
        result = run([int(x) for x in a.processes.split(",") if x], a.work, a.out, a.tiny, a.max_users)
    for t in result["targets"]:
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']:.4f}")
    return 0


def _capacity(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.capacity import assumptions, run

    sizes = tuple(int(x.replace("_", "")) for x in a.items.split(",") if x)
    path = run(a.figures, a.out, sizes, assumptions(recommendations_per_s=a.recommendations_per_s, events_per_s=a.events_per_s))
    print(path)
    return 0


def _gpu(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.gpu import GpuCheckOptions, run

    fields = ("build", "work", "out", "catalog_items", "minilm_limit", "concurrency", "index", "requests", "device")
    return run(GpuCheckOptions(**{k: getattr(a, k) for k in fields}))


def _jitter(a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.jitter import report

    report(a.seconds, a.interval_ms)
    return 0


def _perf_analyzer(_a: argparse.Namespace) -> int:
    from freshrec.offline.benchmarks.perf_analyzer import PerfAnalyzerUnavailable, perf_analyzer_command, perf_analyzer_version

    try:
        argv = perf_analyzer_command()
    except PerfAnalyzerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(" ".join(argv))
    print(perf_analyzer_version(argv))
    return 0

"""What a serving benchmark runs: its options, the models and concurrency levels (Spec, plan),
and the run's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


# Models whose calls a BLS parent makes; perf_analyzer reports them under "Composing models".
# Only models that receive requests during the run may be named (else perf_analyzer stops with
# "failed to find the requested model version").
COMPOSING = {
    "recommend": ("user_tower", "reranker"),
    "recommend_query": ("user_tower", "reranker", "text_encoder", "item_tower"),
    "upsert_items": ("text_encoder", "item_tower"),
}
WRITE_MODELS = ("ingest_events", "upsert_items")


@dataclass(frozen=True)
class Spec:
    """One model benchmarked at several concurrency levels (one perf_analyzer run per level)."""

    label: str  # key in summary.json (recommend_query is the model recommend with a query)
    model: str
    concurrency: tuple[int, ...]
    requests: int  # measured requests per concurrency level
    warmup: int = 10

    @property
    def composing(self) -> tuple[str, ...]:
        return COMPOSING.get(self.label, ())


def plan(smoke: bool, only: tuple[str, ...] = (), concurrency: tuple[int, ...] | None = None, requests: int | None = None) -> list[Spec]:
    """What runs, in order: reads first, then the writes (they grow histories and the catalog)."""
    if smoke:
        specs = [
            Spec("recommend", "recommend", (1,), 40, 5),
            Spec("user_tower", "user_tower", (1,), 40, 5),
            Spec("reranker", "reranker", (1,), 40, 5),
            Spec("item_tower", "item_tower", (1,), 40, 5),
            Spec("text_encoder", "text_encoder", (1,), 40, 5),
            Spec("ingest_events", "ingest_events", (1,), 40, 0),
            Spec("upsert_items", "upsert_items", (1,), 20, 0),
        ]
    else:
        specs = [
            # The targets' p99s (recommend, ingest, upsert) over 1,000-2,000 requests: the 10th-20th
            # slowest request, not the 2nd-4th of a few hundred, which moves with every burst of the machine
            Spec("recommend", "recommend", concurrency or (1, 2, 4, 8), 2000, 20),
            Spec("recommend_query", "recommend", (1,), 200, 10),
            Spec("user_tower", "user_tower", (1, 4), 400, 20),
            Spec("reranker", "reranker", (1, 4), 400, 20),
            Spec("item_tower", "item_tower", (1, 4), 400, 20),
            Spec("text_encoder", "text_encoder", (1, 4), 300, 20),
            Spec("ingest_events", "ingest_events", (1, 4), 1000, 0),
            Spec("upsert_items", "upsert_items", (1, 2), 1000, 0),
        ]
    if only:
        unknown = set(only) - {s.label for s in specs}
        if unknown:
            raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from {[s.label for s in specs]}")
        specs = [s for s in specs if s.label in only]
    if requests:
        specs = [Spec(s.label, s.model, s.concurrency, requests, min(s.warmup, max(1, requests // 10)) if s.warmup else 0) for s in specs]
    return specs


@dataclass
class BenchOptions:
    build: Path = Path("build")
    repository: Path | None = None  # default: the build's embedded repository
    out: Path = Path("docs/benchmarks")
    smoke: bool = False
    state: str | None = None
    catalog_items: int | None = None
    index: str | None = None  # FRESHREC_INDEX for the server
    index_cache: str = "shared"  # "shared": FRESHREC_INDEX_CACHE in the work folder; "off": each instance its own copies
    only: tuple[str, ...] = ()
    concurrency: tuple[int, ...] | None = None
    compare: bool = False
    compare_rounds: int = 3
    work: Path | None = None
    keep_work: bool = False
    requests: int | None = None  # measured requests per run (default: per model, see plan())
    name: str | None = None  # run name (default: main, or catalog_<N>[_<index>])
    write_docs: bool = True
    seed: int = 0


def run_name(opts: BenchOptions) -> str:
    """The run's name under <out>/runs/: `opts.name`, else main, or catalog_<N>[_<index>][_own_copies]."""
    if opts.name:
        return opts.name
    if opts.catalog_items:
        return f"catalog_{opts.catalog_items}" + (f"_{opts.index}" if opts.index else "") + ("_own_copies" if opts.index_cache == "off" else "")
    return "main"

"""`freshrec bench serving`: the served models under load, measured with the real perf_analyzer over gRPC.

    freshrec bench serving [--build build] [--repository model_repository/embedded] [--out docs/benchmarks]
                           [--smoke] [--state URL | --catalog-items N] [--index exact|sq8|hnsw|auto]
                           [--compare] [--only recommend,ingest_events]

What it does:

1. copies the build's state (or `--state`, or a synthetic catalog of `--catalog-items` items made by
   `freshrec.offline.benchmarks.catalog_scale.scaled_state`) into a private work folder, so the build stays as built;
2. writes perf_analyzer `--input-data` JSON files from that state into `<out>/inputs/`: real user ids
   for `recommend`; real history tensors, candidates, tokenised item texts and MiniLM embeddings
   for the towers and the reranker (computed with the build's own ONNX graphs); real MovieLens
   events and item texts for `ingest_events` / `upsert_items`, with an event id / item id that is
   new for every request of a run. perf_analyzer walks the data steps round-robin (each concurrent
   worker takes every n-th step) and starts again from the first step after the warm-up and for
   every run, so every write run gets its own file with at least as many steps as requests and
   no warm-up: every request is a real write, none is an idempotent replay;
3. starts tritonserver (server_ext/launcher.py) on the repository, every model loaded (the towers
   too: they are benchmarked on their own), on loopback; perf_analyzer reads the model-config and
   statistics APIs, which the launcher leaves open (read-only);
4. runs perf_analyzer (`-i grpc`, a fixed `--request-count` per concurrency level, `--percentile=99`,
   `-f` CSV with `--verbose-csv`, `--bls-composing-models` for recommend and upsert_items) for every
   model and concurrency level, and snapshots Triton's own inference statistics around each run;
   beside every run, `freshrec.offline.benchmarks.jitter` watches for the machine's own slow bursts and says which of
   the run's slowest requests overlapped one (a run that hangs is cut off, logged and run again once);
5. writes `<out>/serving.md` (tables, the exact perf_analyzer command lines, machine details),
   `<out>/summary.json` (every figure) and PNG plots.

`--smoke` is the CI version: the tiny build (built into the work folder if `--build` has none), one
concurrency level, a few dozen requests per model. `--compare` adds the tuning study: the same
perf_analyzer runs against one server per variant (`TUNING_VARIANTS`: BLS vs in-process towers,
batching delay), rotating between the servers so all see the same machine load.

The modules, in the order a run goes through them: `plan` (options, what runs), `inputs` (input
data from the served state), `server` (the tritonserver, pre-warm, memory), `runs` (one
perf_analyzer run under a watchdog), `pa_output` (perf_analyzer's CSV, console report and profile
export), `stats` (Triton's statistics and freshrec's metrics), `compare` (the tuning study),
`orchestrate` (`bench()`: the whole run), and the report: `targets`, `plots`, `markdown` and
`report` (serving.md, summary.json). The command line is in freshrec/offline/benchmarks/cli.py.
"""

from freshrec.offline.benchmarks.serving.inputs import Dataset, _history, generate_inputs
from freshrec.offline.benchmarks.serving.orchestrate import bench
from freshrec.offline.benchmarks.serving.plan import BenchOptions, Spec, plan
from freshrec.offline.benchmarks.serving.report import assemble

__all__ = ["BenchOptions", "Dataset", "Spec", "_history", "assemble", "bench", "generate_inputs", "plan"]

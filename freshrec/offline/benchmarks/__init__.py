"""`freshrec bench <what>` (cli.py): serving (perf_analyzer over gRPC), index, stores, gpu, jitter,
perf-analyzer; the tools they share (perf_analyzer, jitter, catalog_scale)."""

"""`freshrec bench <what>`: serving (perf_analyzer over gRPC), index, stores, gpu; the tools they
share (perf_analyzer, jitter, catalog_scale)."""

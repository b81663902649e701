"""Offline tooling: evaluation (`evaluation/`) and benchmarks (`benchmarks/`). The server, the
exporter and the product packages never import it; it reaches the state only through the store's
API and the repository only through the exporter's readers and writers."""

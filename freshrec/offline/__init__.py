"""Offline tooling: evaluation (`evaluation/`) and benchmarks (`benchmarks/`), with the facts of the
machine they ran on read once (`machine.py`). The server, the exporter and the product packages
never import it; it reaches the state only through the store's API and the repository only through
the exporter's readers and writers."""

"""Benchmarks (run as modules, e.g. ``python -m bench.cas_throughput``)."""

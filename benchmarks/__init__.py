"""Benchmark scripts of boundkit, run from the repository root as ``python -m benchmarks.NAME``."""

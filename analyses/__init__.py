"""Thesis re-analyses of boundkit, run from the repository root as ``python -m analyses.NAME``."""

"""Benchmarks (outside the installed package); run through scripts/benchmark.py."""

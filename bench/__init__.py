"""Benchmarks: one harness (bench/harness.py), one registration per benchmark (bench/registry.py);
run them with ``python -m bench.run``. Not part of the installed package."""

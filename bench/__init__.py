"""Benchmarks (not tests): `python -m bench.engines` and `python -m bench.served`, run from the repository root."""

"""Benchmarks of the TPOT stack: a script (`python -m benchmarks.run`), not a test.

See docs/benchmarks.md.
"""

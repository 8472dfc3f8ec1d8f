"""Benchmarks of how the poller's and the helm API's costs grow, each side by side with a naive baseline.

Run them all with `benchmarks/run` (writes BENCHMARKS.md); `tests/benchmarks` smoke-runs each at tiny sizes.
"""

"""Benchmark helpers: interleaved timing, bandwidth and machine records."""

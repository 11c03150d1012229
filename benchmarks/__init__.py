"""Benchmarks: `python -m benchmarks` (or `make bench`). Results are ratios, measured side by side."""

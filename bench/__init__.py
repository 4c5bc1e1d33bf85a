"""Benchmarks: each figure measured side by side with its peer or ceiling, in the same run."""

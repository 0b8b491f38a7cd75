"""Benchmarks behind `make bench`: each module measures ratios against baselines run in the same process."""

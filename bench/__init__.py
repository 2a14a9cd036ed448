"""Benchmarks: each prints a table, writes JSON under ``bench/results/`` and compares with a baseline
in the same run (ratios, since machines are noisy)."""

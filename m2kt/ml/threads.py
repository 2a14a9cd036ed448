"""How many threads torch gets: one policy for the demo, the benchmark and the test suite."""

import os

import torch


def default_threads() -> int:
    """``OMP_NUM_THREADS`` where set (a parallel test run gives each worker its share of the
    cores), else two or fewer: our models are small, so more threads gain little and, on a
    shared 2-core machine, oversubscribed threads wait on each other."""
    share = os.environ.get("OMP_NUM_THREADS", "").strip()
    if share.isdigit() and int(share) > 0:
        return int(share)
    return min(2, os.cpu_count() or 1)


def use_default_threads() -> int:
    """Set torch's intra-op threads to :func:`default_threads`; returns the number."""
    n = default_threads()
    torch.set_num_threads(n)
    return n

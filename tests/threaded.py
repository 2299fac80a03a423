"""Runs of one step function alone and in threads at once, for the tests that a transform
shared by threads keeps each thread's numbers (the buffers a step keeps are per thread)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import optree
import torch


def assert_threads_keep_their_numbers(steps: Callable, runs: list) -> None:
    """``steps(*run)`` returns a tree of tensors; each run gives the same tensors when the runs
    step in threads at once (torch's kernels release the GIL) as when each runs alone."""
    alone = [steps(*run) for run in runs]
    together: list = [None] * len(runs)

    def target(i: int) -> None:
        together[i] = steps(*runs[i])

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(optree.tree_leaves(together), optree.tree_leaves(alone)):
        assert torch.equal(a, b)

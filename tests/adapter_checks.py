"""Checks shared by the tests of the adapter's fast paths."""

from __future__ import annotations

import torch


def assert_same_state(opt, params, ref, ref_params, tol: float) -> None:
    """Every state leaf of ``opt`` (step counts included) equals ``ref``'s, parameter by
    parameter, within ``tol`` (compared in float64)."""
    for p, q in zip(params, ref_params):
        flat_a = torch.utils._pytree.tree_leaves(opt.state[p])
        flat_b = torch.utils._pytree.tree_leaves(ref.state[q])
        assert len(flat_a) == len(flat_b)
        for a, b in zip(flat_a, flat_b):
            torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)

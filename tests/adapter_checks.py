"""Checks shared by the tests of the adapter's fast paths."""

from __future__ import annotations

import torch
from tolerance import assert_close_ulps


def assert_same_state(opt, params, ref, ref_params, tol: float | None = None, *,
                      ulps: int | None = None) -> None:
    """Every state leaf of ``opt`` (step counts included) equals ``ref``'s, parameter by
    parameter: float64 leaves within ``tol`` (relative and absolute), float32 ones within
    ``ulps`` ulps of the reference leaf's max-abs (a state is an average of gradients or of
    their squares, or a count: its final size is its size along the run), others exactly."""
    for p, q in zip(params, ref_params):
        flat_a = torch.utils._pytree.tree_leaves(opt.state[p])
        flat_b = torch.utils._pytree.tree_leaves(ref.state[q])
        assert len(flat_a) == len(flat_b)
        for a, b in zip(flat_a, flat_b):
            if b.dtype == torch.float32:
                assert_close_ulps(a, b, ulps=ulps, scale=b.abs().max())
            else:
                torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


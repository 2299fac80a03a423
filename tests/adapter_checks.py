"""Checks shared by the tests of the adapter's fast paths."""

from __future__ import annotations

import torch
from tolerance import assert_close_ulps, ulp_budget


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


def assert_low_precision_trajectory(ours, theirs, peak, largest_step, steps: int,
                                    update_ops: int) -> None:
    """Parameters after ``steps`` steps of two implementations that round differently, in a low
    precision (bfloat16) where an update is about an ulp of the parameter, element-wise.

    Per step each element's ``p + u`` rounds at its own magnitude (``peak``, the element-wise
    max ``|p|`` along the reference run): 1 op, 2 ulps apart. The update's ``update_ops`` ops
    round at the update's magnitude (``largest_step``, the largest ``|p_t+1 - p_t|``):
    ``update_ops * ulp(step) <= eps * update_ops * step < 2 ulp(update_ops * step)``, worth 2
    ops at ``update_ops * largest_step``. So: ``ulp_budget(steps, 3)`` ulps of
    ``max(peak, update_ops * largest_step)``.
    """
    for a, b, top, step in zip(ours, theirs, peak, largest_step):
        assert_close_ulps(a, b, ulps=ulp_budget(steps, 3),
                          scale=torch.clamp(top.double(), min=update_ops * step))

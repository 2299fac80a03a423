"""Conformance cases of optax's line searches, optax's pure L-BFGS and its alias
(``transforms/linesearch.py``, ``transforms/quasi_newton.py``, ``aliases/search.py``);
``conformance.CASES`` includes them."""

from __future__ import annotations

import optree
import torch
from conformance import Case, Live

import functional_optim as fo


def _objective(p):
    """A smooth objective of the parameters: :math:`\\sum_i \\log(1 + |p_i|^2)` (real for
    complex leaves; its gradient is torch.func-traceable)."""
    return sum(torch.log1p(x.abs() ** 2).sum() for x in optree.tree_leaves(p) if x is not None)


def _search_extra(grads):
    """What a line search takes besides the direction (here the incoming gradients): the
    objective, a value at the parameters and a gradient there (the direction's opposite, so
    that it is a descent direction; the suite's trees know the gradients only)."""
    terms = [(g.abs() ** 2).sum() for g in optree.tree_leaves(grads) if g is not None]
    value = sum(terms) / max(len(terms), 1) if terms else 1.0
    return {"value": value, "grad": fo.tree.map(torch.neg, grads), "value_fn": _objective}


# the trial points' gradients (torch.func.grad_and_value) run autograd's engine, which takes a
# CUDA device guard: a CPU-only build aborts on fake CUDA tensors. The update has no host sync:
# test_optax_search.py traces it symbolically on CPU and scans the graph (and
# test_trace_once_replay_with_new_hparams replays a trace with new hyperparameters)
_FAKE_CUDA = ("test_capturable_fake_cuda_trace",
              "gradients at trial points run autograd's engine, whose CUDA device guard aborts a "
              "CPU-only build on fake CUDA tensors; test_optax_search.py checks the symbolic "
              "CPU trace for host syncs")
# the suite's state is made by updates at the same parameters, so the step difference is 0 and
# rho = 1/Re<du, dw> sits at its jump (optax's 0 for a zero product): finite differences straddle
# it. test_optax_search.py checks the meta-gradients along a trajectory that moves
_RHO_JUMP = ("test_grad_matches_finite_differences",
             "the suite updates its state at unchanged parameters: dw = 0 puts rho = "
             "1/Re<du, dw> at its jump (0 at 0, as optax); test_optax_search.py checks the "
             "gradients along a moving trajectory")
# optax keeps the weights rho real (one per memory slot) whatever the parameters' dtype
_REAL_WEIGHTS = ("test_complex",
                 "the memory's weights rho = 1/Re<du, dw> are real (optax's); complex "
                 "parameters are checked in test_optax_search.py")

CASES = [
    Case("scale_by_backtracking_linesearch",
         lambda: fo.scale_by_backtracking_linesearch(3, store_grad=True), extra=_search_extra,
         float64_scalars=True, excluded=(_FAKE_CUDA,)),
    Case("scale_by_zoom_linesearch", lambda: fo.scale_by_zoom_linesearch(3),
         extra=_search_extra, float64_scalars=True, excluded=(_FAKE_CUDA,)),
    Case("scale_by_lbfgs_direction", lambda: fo.scale_by_lbfgs_direction(memory_size=2),
         excluded=(_RHO_JUMP, _REAL_WEIGHTS)),
    Case("optax_lbfgs", lambda: fo.optax_lbfgs(max_linesearch_steps=3), extra=_search_extra,
         float64_scalars=True, excluded=(_FAKE_CUDA, _RHO_JUMP, _REAL_WEIGHTS)),
]

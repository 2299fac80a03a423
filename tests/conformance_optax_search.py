"""Conformance cases of optax's line searches, optax's pure L-BFGS and its alias
(``transforms/linesearch.py``, ``zoom.py``, ``quasi_newton.py``, ``aliases/search.py``);
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


def _on_objective(make, direction):
    """The transform ``make()`` with the objective bound: each ``update`` passes the value and
    gradient of :func:`_objective` at its parameters and the objective itself, and
    ``direction(g, u)`` of the gradient ``g`` and the incoming updates ``u`` as the updates (the
    suite's updates are random: a line search needs a descent direction to do its work)."""
    def bound():
        tx = make()

        def update(updates, state, params=None, hparams=None, **extra):
            if params is None or fo.tree.num_leaves(updates) == 0:
                return tx.update(updates, state, params, hparams, **extra)
            value, grad = fo.transforms.linesearch.value_and_grad(_objective, params)
            grad = fo.tree.map(lambda u, g: g, updates, grad)
            extra = {"value": value, "grad": grad, "value_fn": _objective, **extra}
            return tx.update(direction(grad, updates), state, params, hparams, **extra)

        return fo.Transform(tx.init, update, tx.hparams)

    return bound


def _descent(grad, updates):
    """The updates, negated where they ascend (a descent direction that follows them)."""
    ascent = fo.transforms.linesearch.real_dot(grad, updates) > 0
    return fo.tree.map(lambda u: torch.where(ascent, -u, u), updates)


def _noisy_gradient(grad, updates):
    """The gradient plus a tenth of the updates (L-BFGS preconditions gradients)."""
    return fo.tree.add(grad, updates, 0.1)


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

# On the objective the searches accept early: the tolerances act on stricter conditions (a small
# curv_rtol keeps the zoom bracketing and zooming); Hager-Zhang's approximate decrease acts on
# the value's scale (a value of -1e6 makes c3|f| the binding term)
_BACKTRACKING = {"atol": Live(value=1.0), "slope_rtol": Live(value=0.5)}
_STRICT = {"curv_rtol": 0.05}
_ZOOM = {"curv_rtol": Live(value=0.3), "slope_rtol": Live(value=0.5),
         "increase_factor": Live(value=3.0, others=_STRICT),
         # (the first bracket is [0, 1]: a precision of 1 would sit on its length)
         "stepsize_precision": Live(value=2.0, others=_STRICT),
         "tol": Live(value=0.1, others=_STRICT),
         "approx_dec_rtol": Live(values=(-1e6,) * 3)}
_LBFGS = {**_ZOOM, "tol": Live(value=0.1), "curv_rtol": Live(value=0.1),
          "slope_rtol": Live(value=0.7), "stepsize_precision": Live(excluded=(("other_value", (
    "the alias's case searches 2 iterations (a short compile), one bracketing, one zooming, "
    "which is the last anyway: the precision cannot end the search earlier; the "
    "scale_by_zoom_linesearch case (the same block, 3 iterations) checks it")),))}

CASES = [
    Case("scale_by_backtracking_linesearch",
         _on_objective(lambda: fo.scale_by_backtracking_linesearch(3, store_grad=True),
                       _descent), float64_scalars=True, excluded=(_FAKE_CUDA,),
         live=_BACKTRACKING),
    Case("scale_by_zoom_linesearch",
         _on_objective(lambda: fo.scale_by_zoom_linesearch(3), _descent),
         float64_scalars=True, excluded=(_FAKE_CUDA,), live=_ZOOM),
    Case("scale_by_lbfgs_direction", lambda: fo.scale_by_lbfgs_direction(memory_size=2),
         excluded=(_RHO_JUMP, _REAL_WEIGHTS)),
    Case("optax_lbfgs", _on_objective(lambda: fo.optax_lbfgs(memory_size=2,
                                                             max_linesearch_steps=2),
                                      _noisy_gradient), float64_scalars=True,
         excluded=(_FAKE_CUDA, _RHO_JUMP, _REAL_WEIGHTS), live=_LBFGS),
]

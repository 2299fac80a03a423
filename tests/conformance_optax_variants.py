"""Conformance cases of optax's variants of torch's names (``aliases.optax_variants``) and of the
block options they are built from; ``conformance.CASES`` includes them.

The options that keep a state in another dtype (``mu_dtype``, ``accumulator_dtype``) have a
case each with the checks that their float32 state defeats excluded (its dtype, and float64
finite differences); ``test_optax_variants.py`` checks their trajectories.
"""

from __future__ import annotations

import torch
from conformance import _RADAM, _RPROP_BOUNDS, Case, Live

import functional_optim as fo

# optax computes Adafactor's decay 1 - (t - t0)^-c in float32 (and so does the library, for
# optax's numbers), with the exact formula's derivative: float64 finite differences in c or t0
# see float32's rounding. The case takes c = 0 and t0 = 0, which the conformance suite's finite
# differences leave unperturbed (relative steps; t0 acts with a c, given in its cell);
# test_optax_variants checks those derivatives.
# With c = 0 the unfactored updates are sign(g), of RMS 1: a threshold of 0.8 keeps the
# clipping away from its kink
_FLOAT32_DECAY = (("grad", "optax computes the decay in float32: float64 finite differences "
                           "see its rounding; test_optax_variants.py checks the derivative"),)
# optax's Adafactor adds eps to the squared gradients: gradients of 1e-16 (squares of 1e-32)
# make an eps of 1e-30 count
_ADAFACTOR = {"eps": Live(grads_scale=1e-16),
              "decay_rate": Live(excluded=_FLOAT32_DECAY),
              "decay_offset": Live(others={"decay_rate": 0.8}, excluded=_FLOAT32_DECAY)}

# mu_dtype / accumulator_dtype: the state is float32 (complex64) by design, and float64 finite
# differences see its rounding (test_optax_variants.py checks the trajectories; the live
# hyperparameters' grad checks inherit the exclusion)
_ROUNDING = "the state is rounded to float32 each step: float64 finite differences see it"
_OWN_DTYPE = (("test_dtype_kept", "the state keeps its own dtype (float32) by design"),
              ("test_complex", "the state keeps its own dtype (complex64) by design"),
              ("test_grad_matches_finite_differences", _ROUNDING))

CASES = [
    Case("optax_nadam", lambda: fo.optax_nadam(lr=0.01, eps_root=1e-8, weight_decay=0.1,
                                               decoupled_weight_decay=True)),
    # the second moment alone corrected (scale_by_adam's bias_correction="second_moment")
    Case("optax_amsgrad", lambda: fo.optax_amsgrad(lr=0.01, eps_root=1e-8, weight_decay=0.1,
                                                   maximize=True, bias_correction_mu=False)),
    Case("optax_adagrad", lambda: fo.optax_adagrad(lr=0.1, weight_decay=0.1)),
    Case("optax_rmsprop",
         lambda: fo.optax_rmsprop(lr=0.01, weight_decay=0.1, momentum=0.9, centered=True,
                                  nesterov=True, bias_correction=True, initial_scale=0.1)),
    Case("optax_radam", lambda: fo.optax_radam(lr=0.01, eps_root=1e-8, weight_decay=0.1,
                                               nesterov=True), live=_RADAM),
    Case("optax_rprop", lambda: fo.optax_rprop(lr=0.01, maximize=True), live=_RPROP_BOUNDS),
    # a state kept in a dtype of its own (float32 beside float64 parameters): pure, vmap,
    # compile and capture as any block; its dtype and its rounding are the point
    Case("scale_by_adam_mu_dtype",
         lambda: fo.scale_by_adam(nesterov=True, mu_dtype=torch.float32),
         excluded=_OWN_DTYPE),
    Case("trace_accumulator_dtype",
         lambda: fo.trace(0.9, nesterov=True, accumulator_dtype=torch.float32),
         excluded=_OWN_DTYPE),
    Case("optax_adafactor",
         lambda: fo.optax_adafactor(lr=0.05, min_dim_size_to_factor=2, decay_rate=0.0,
                                    clipping_threshold=0.8, momentum=0.9, momentum_dtype=None,
                                    weight_decay=0.1),
         complex=False, live=_ADAFACTOR),
]

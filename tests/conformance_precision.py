"""Conformance cases of the precision policy (``transforms.low_precision``); ``conformance.CASES``
includes them. The suite runs on float64 parameters, where the policy's casts are the identity
(float64 computes in float64), so every check holds; the low-precision numbers are tested in
``test_precision.py``."""

from __future__ import annotations

import torch
from conformance import Case, Live

import functional_optim as fo

# what the policy is for: state and updates in other dtypes than the parameters' (tested with
# their dtypes written out in test_precision.py)
_DTYPES = (("test_dtype_kept", "the policy stores state in dtypes of its own (bfloat16 "
                               "parameters: float32 updates, state in its storage dtype)"),)

# Kahan's compensation is the rounding error of p + y: a hyperparameter given as a number and
# the same value as a 0-d tensor round one ulp apart somewhere, and c is that ulp, so the
# number-vs-tensor comparison of the trajectory cannot hold for c (the parameters agree)
_RESIDUAL = Live(excluded=(("other_value", "Kahan's compensation is the rounding error of "
                                           "p + y, which an ulp-level change replaces"),))
# SGD's dampening acts with momentum only
_DAMPENING = {"0.dampening": Live(others={"0.momentum": 0.9})}

CASES = [
    Case("with_state_dtype",
         lambda: fo.with_state_dtype(fo.adam(lr=0.01), "fp64", stochastic_rounding=True,
                                     nu="fp64"), excluded=_DTYPES,
         precision=torch.float32),  # (float32 parameters compute in float32, store float64)
    Case("precision_kahan",
         lambda: fo.precision(fo.adamw(lr=0.01, weight_decay=0.1), params="kahan"),
         excluded=_DTYPES, live={"*": _RESIDUAL}),
    Case("precision_master_stochastic",
         lambda: fo.precision(fo.adamw(lr=0.01, weight_decay=0.1), stochastic_rounding=True,
                              params="master"), excluded=_DTYPES, rounded_params=True),
    Case("stochastic_rounding", lambda: fo.chain(fo.sgd(lr=0.1), fo.stochastic_rounding(3)),
         excluded=_DTYPES, live=_DAMPENING),
    Case("kahan_summation", lambda: fo.chain(fo.sgd(lr=0.1), fo.kahan_summation()),
         excluded=_DTYPES, live={"*": _RESIDUAL}),
    Case("master_weights", lambda: fo.chain(fo.sgd(lr=0.1), fo.master_weights()),
         excluded=_DTYPES, live=_DAMPENING),
]

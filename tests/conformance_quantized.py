"""Conformance cases of the quantized optimizer state (``transforms.quantized``,
``aliases.quantized``); ``conformance.CASES`` includes them. One case per alias (its registry
case), the storage wrapper around other moments (momentum, centered RMS) in 4 bits, and the
precision policy with an 8-bit storage around a fused alias.
Every leaf of at least one dimension is quantized (``min_size=0``), in blocks of 4 so that the
sample leaves have several."""

from __future__ import annotations

from conformance import Case

import functional_optim as fo

# The code chosen for a state element is a rounding: piecewise constant in the state, the
# parameters, the gradients and every hyperparameter, so finite differences jump where autograd
# (through the dequantized values and the block maxima) sees a slope of 0
_ROUNDING = (("test_grad_matches_finite_differences",
              "quantization rounds the state to a code: piecewise constant, so finite "
              "differences jump where the gradient through the code is 0"),
             # the state's block maxima are float32 and its codes integers whatever the
             # parameters' dtype (the documented storage); the updates keep the parameters'
             # dtype (tests/test_quantized.py::test_updates_keep_the_parameters_dtype)
             ("test_dtype_kept", "quantized state: float32 block maxima and integer codes "
                                 "for every parameter dtype, by design"))

CASES = [
    Case("adamw_8bit", lambda: fo.adamw_8bit(lr=0.01, weight_decay=0.1, block_size=4,
                                             min_size=0), excluded=_ROUNDING),
    Case("adam_8bit", lambda: fo.adam_8bit(lr=0.01, weight_decay=0.1, amsgrad=True,
                                           block_size=4, min_size=0), excluded=_ROUNDING),
    Case("adamw_4bit", lambda: fo.adamw_4bit(lr=0.01, weight_decay=0.1, block_size=4,
                                             min_size=0), excluded=_ROUNDING),
    Case("quantized_state_momentum_rms_4bit",
         lambda: fo.chain(fo.quantized_state(fo.trace(0.9), 4, 4, min_size=0),
                          fo.quantized_state(fo.scale_by_rms(centered=True), 4, 4, min_size=0)),
         excluded=_ROUNDING),
    # the policy with quantized storage around a fused alias (the chunked path over one rule),
    # its stochastic rounding and master weights (Kahan with quantized moments:
    # test_precision_quantized.py; its compensation is a rounding residual, see
    # conformance_precision.py)
    Case("precision_int8_master_stochastic",
         lambda: fo.precision(fo.adamw(lr=0.01, weight_decay=0.1),
                              fo.QuantizedStorage(8, 4, min_size=0), stochastic_rounding=True,
                              params="master"), excluded=_ROUNDING, rounded_params=True),
]

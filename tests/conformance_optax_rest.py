"""Conformance cases of optax's last contrib names: ``split_real_and_imaginary``, optax's
plateau rule and optax's Muon; ``conformance.CASES`` includes them."""

from __future__ import annotations

from conformance import Case, Live, _loss_like

import functional_optim as fo

CASES = [
    Case("split_real_and_imaginary_adam",
         lambda: fo.split_real_and_imaginary(fo.adam(lr=0.01)),
         excluded=(("test_complex", "its state holds the real and imaginary parts as real "
                    "leaves by design; test_optax_rest.py checks complex trajectories"),)),
]

_FLAT = (1.0, 1.0, 1.0, 1.0)

CASES += [
    # optax's plateau rule: a flat loss is a plateau from the second value (patience 1)
    Case("reduce_on_plateau_optax_rule",
         lambda: fo.reduce_on_plateau(lr=0.1, patience=1, factor=0.5, cooldown=1, min_lr=1e-3,
                                      rule="optax", atol=1e-3),
         extra=_loss_like, float64_scalars=True, live={
             "factor": Live(steps=4, values=_FLAT),
             "min_lr": Live(value=0.09, steps=4, values=_FLAT),
             # improvements of 5e-5 (relative): a plateau for 1e-4, not for 1e-5 (no atol)
             "threshold": Live(value=1e-5, steps=4, values=(1.0, 0.99995, 0.9999, 0.99985),
                               others={"atol": 0.0}),
             # improvements of 0.05 (absolute): a plateau for 0.1, not for 1e-3
             "atol": Live(value=0.1, steps=4, values=(1.0, 0.95, 0.9, 0.85))}),
]

"""Conformance cases of optax's last contrib names: ``split_real_and_imaginary``, optax's
plateau rule and optax's Muon; ``conformance.CASES`` includes them."""

from __future__ import annotations

from conformance import _NS_ULPS, Case, Live, _loss_like

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

# optax's Muon: ε floors the norm of tiny momenta and Adam's root (no decay to dwarf them)
_NO_DECAY = {"weight_decay": 0.0, "adam_weight_decay": 0.0}
CASES += [
    Case("optax_muon",
         lambda: fo.optax_muon(lr=0.01, weight_decay=0.1, adam_weight_decay=0.1, match_rms=True,
                               adaptive=True),
         complex=False, ulps=_NS_ULPS, live={
             "eps": Live(grads_scale=1e-9, others=_NO_DECAY),
             "adam_eps_root": Live(value=1e-3, grads_scale=1e-2, others=_NO_DECAY),
             "ns_coefficients.0": Live(value=3.5), "ns_coefficients.1": Live(value=-4.8),
             "ns_coefficients.2": Live(value=2.05)}),
]


def _last_axis_out(tree):
    """optax's dimension numbers for every leaf of 2 or more axes: fan-in the first axis,
    fan-out the last, the others batch axes; the rest AdamW's."""
    return fo.tree.map(lambda p: fo.MuonDimensionNumbers(0, p.ndim - 1) if p.ndim >= 2
                       else None, tree)


CASES += [
    Case("optax_muon_dimension_numbers",
         lambda: fo.optax_muon(lr=0.01, dimension_numbers=_last_axis_out),
         complex=False, ulps=_NS_ULPS, live={
             "rms_scale": Live(excluded=tuple((check, "the RMS of match_rms, off here (the "
                                               "optax_muon case checks it)")
                                              for check in ("other_value", "grad"))),
             "eps": Live(grads_scale=1e-9, others=_NO_DECAY),
             "ns_coefficients.0": Live(value=3.5), "ns_coefficients.1": Live(value=-4.8),
             "ns_coefficients.2": Live(value=2.05)}),
]

"""Conformance cases of optax's last contrib names: ``split_real_and_imaginary``, optax's
plateau rule and optax's Muon; ``conformance.CASES`` includes them."""

from __future__ import annotations

from conformance import Case

import functional_optim as fo

CASES = [
    Case("split_real_and_imaginary_adam",
         lambda: fo.split_real_and_imaginary(fo.adam(lr=0.01)),
         excluded=(("test_complex", "its state holds the real and imaginary parts as real "
                    "leaves by design; test_optax_rest.py checks complex trajectories"),)),
]

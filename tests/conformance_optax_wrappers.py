"""Conformance cases of optax's vocabulary outside the optimizers: bounds on updates
(``transforms.bounding``), wrappers (``combinators``), line searches and optax's L-BFGS;
``conformance.CASES`` includes them."""

from __future__ import annotations

from conformance import Case, Live

import functional_optim as fo

CASES = [
    # the sample gradients' leaf RMS is about 1: 0.5 clips every leaf, 0.4 moves it
    Case("clip_by_block_rms", lambda: fo.clip_by_block_rms(0.5)),
    # unit norms of the sample parameters and gradients are about 1 to 3: 0.3 clips most
    # units; eps floors a parameter norm, which tiny parameters make act
    Case("adaptive_grad_clip", lambda: fo.adaptive_grad_clip(0.3),
         live={"eps": Live(params_scale=1e-6)}),
    Case("adaptive_grad_clip_jax_layout", lambda: fo.adaptive_grad_clip(0.3, layout="jax"),
         live={"eps": Live(params_scale=1e-6)}),
    Case("keep_params_nonnegative", fo.keep_params_nonnegative, complex=False),
]

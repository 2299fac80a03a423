"""Conformance cases of optax's vocabulary outside the optimizers: bounds on updates
(``transforms.bounding``), wrappers (``combinators``), line searches and optax's L-BFGS;
``conformance.CASES`` includes them."""

from __future__ import annotations

import torch
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


def _one_or_two(gradient_step):
    """Windows of 1 and 2 micro-steps in turn (a tensor function of the completed windows)."""
    return 1 + torch.remainder(gradient_step, 2)


class _HalvingLr:
    """A stateful schedule (optax's protocol): the learning rate halves every other step."""

    def init(self):
        return {"count": torch.zeros((), dtype=torch.int64)}

    def update(self, state, **extra):
        return {"count": state["count"] + 1}

    def __call__(self, state, **extra):
        return 0.01 * 0.5 ** torch.div(state["count"], 2, rounding_mode="floor").double()


def _norm_measures():
    return fo.monitor({"norm": fo.tree.global_norm,
                       "norm_ema": fo.measure_with_ema(fo.tree.global_norm, 0.9)})


CASES += [
    # (the skipping itself: test_optax_wrappers.py; here every micro-step is finite)
    Case("multi_steps_schedule_skip",
         lambda: fo.multi_steps(fo.sgd(lr=0.1, momentum=0.9), _one_or_two,
                                should_skip=fo.skip_not_finite),
         live={"dampening": Live(others={"momentum": 0.9})}),
    Case("conditionally_identity",
         lambda: fo.conditionally(fo.adam(lr=0.01), every_k=2, otherwise="identity")),
    Case("lookahead_reset_state",
         lambda: fo.lookahead(fo.sgd(lr=0.1, momentum=0.9), sync_period=2, alpha=0.5,
                              reset_state=True),
         live={"inner.dampening": Live(others={"inner.momentum": 0.9})}),
    Case("snapshot_monitor", lambda: fo.chain(fo.snapshot("grad_norm", fo.tree.global_norm),
                                              _norm_measures(), fo.scale(0.5)),
         float64_scalars=True),  # (the measurements of complex updates are real)
    Case("stateless_with_tree_map",
         lambda: fo.stateless_with_tree_map(lambda u, p: 0.5 * u + 0.1 * p)),
    Case("inject_hparams_stateful_in_state",
         lambda: fo.inject_hparams(fo.adamw(lr=0.01, weight_decay=0.1), {"lr": _HalvingLr()},
                                   in_state=("weight_decay",)), float64_scalars=True),
]

"""Conformance cases of the tricks of issue 20 (``aliases.tricks``) and of the blocks they are
built from where an alias does not exercise them; ``conformance.CASES`` includes them. One case
per alias (its registry case); the structural variant that changes the math (cautious weight
decay); the trust-region clipping (in no alias)."""

from __future__ import annotations

from conformance import _NS_ULPS, Case, Live, _as_matrix

import functional_optim as fo

# an ε that floors a root of about |g| acts on tiny gradients (no decay to dwarf them)
_EPS = {"eps": Live(grads_scale=1e-9, others={"weight_decay": 0.0})}
# Muon's ε floors the norm of tiny momenta; each coefficient moved a little
_MUON = {"eps": Live(grads_scale=1e-9, others={"weight_decay": 0.0, "adamw_weight_decay": 0.0}),
         "adamw_eps": Live(grads_scale=1e-9, others={"weight_decay": 0.0,
                                                     "adamw_weight_decay": 0.0}),
         "ns_coefficients.0": Live(value=3.5), "ns_coefficients.1": Live(value=-4.8),
         "ns_coefficients.2": Live(value=2.05)}
# SGD's momentum acts from its second step: the fourth pass (passes alternate ascent/outer)
_ASAM = {"eps": Live(grads_scale=1e-12), "momentum": Live(steps=5),
         "dampening": Live(steps=5, others={"momentum": 0.9})}



def _halves(params):
    return fo.tree.map(lambda p: p.numel() if p.numel() % 2 else 2, params)


CASES = [
    Case("cautious_adamw", lambda: fo.cautious_adamw(lr=0.01, weight_decay=0.1),
         complex=False, live=_EPS),
    Case("cautious_adamw_cautious_decay",
         lambda: fo.cautious_adamw(lr=0.01, weight_decay=0.1, cautious_weight_decay=True),
         complex=False, live=_EPS),
    # eps (1e-15) only acts against a root of that size: a larger value shows it
    Case("laprop", lambda: fo.laprop(lr=0.01, weight_decay=0.1), live={"eps": Live(value=0.5)}),
    Case("mars_adamw", lambda: fo.mars_adamw(lr=0.01, weight_decay=0.1, gamma=0.5),
         complex=False, live=_EPS),
    Case("adam_mini", lambda: fo.adam_mini(lr=0.01), complex=False, live=_EPS),
    # several blocks per leaf: two halves of an even leaf, one per element of an odd one
    Case("adam_mini_blocks", lambda: fo.adam_mini(lr=0.01, blocks=_halves), complex=False,
         live=_EPS),
    Case("adamc", lambda: fo.adamc(lr=0.01, weight_decay=0.1, max_lr=0.02), live=_EPS),
    Case("orthograd_adamw", lambda: fo.orthograd_adamw(lr=0.01, weight_decay=0.1),
         complex=False, live=_EPS),
    Case("muon_adamw", lambda: fo.muon_adamw(weight_decay=0.1, adamw_weight_decay=0.1,
                                             ns_dtype=None),
         complex=False, live=_MUON, ulps=_NS_ULPS),
    Case("adamw_ema", lambda: fo.adamw_ema(lr=0.01, ema_decay=0.9), live=_EPS),
    Case("asam_sgd", lambda: fo.asam_sgd(lr=0.1, weight_decay=0.1), live=_ASAM),
    # ε floors the norm of tiny steps (no decay, which would dwarf them)
    Case("msam_sgd", lambda: fo.msam_sgd(lr=0.1),
         live={"eps": Live(grads_scale=1e-12, others={"weight_decay": 0.0})}),
    Case("clip_by_trust_ratio", lambda: fo.clip_by_trust_ratio(0.05)),
    # per-iteration Newton-Schulz coefficients (a tuple of triples as hparams)
    Case("scale_by_newton_schulz_per_step",
         lambda: fo.scale_by_newton_schulz(((3.4445, -4.7750, 2.0315), (1.5, -0.5, 0.0)), 2,
                                           ns_dtype=None),
         complex=False, shape=_as_matrix, live={"eps": Live(grads_scale=1e-9)},
         ulps=_NS_ULPS),
]

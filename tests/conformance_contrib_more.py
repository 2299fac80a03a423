"""Conformance cases of optax.contrib's other algorithms (``aliases.contrib_more``) and of the
blocks they are built from where an alias does not exercise them; ``conformance.CASES`` includes
them. One case per alias (its registry case); the blocks' structural variants that change the
math (ADOPT's Nesterov step without clipping, SAM's opaque protocol, ASAM's normalization)."""

from __future__ import annotations

import torch
from conformance import Case, Live

import functional_optim as fo


def quartic_hvp(params, v):
    """The Hessian-vector product of :math:`\\sum p^4/12 + p^2/2`: :math:`(p^2 + 1) v`."""
    return fo.tree.map(lambda p, u: (p * p + 1) * u, params, v)


def quartic_grad(params, i=0):
    """The gradient of :math:`\\sum p^4/12 + p^2/2` (for SAM's ``grad_fn(params, i)``)."""
    return fo.tree.map(lambda p: p ** 3 / 3 + p, params)


def per_example(g: torch.Tensor) -> torch.Tensor:
    """Three examples' gradients from one: of different norms, so that clipping acts."""
    return torch.stack([g, -0.5 * g, 2 * g + 0.25])


# every step is clipped at ±c on the sample gradients: small ones leave the preconditioned
# step below c, so that β, γ (and eps, once it is the larger floor) act
_SOPHIA = {"betas.*": Live(grads_scale=1e-4), "gamma": Live(grads_scale=1e-4),
           "eps": Live(value=1.0, grads_scale=1e-2)}
# SGD's momentum acts from its second step: the fourth pass (passes alternate ascent/outer)
_SAM = {"eps": Live(grads_scale=1e-12), "momentum": Live(steps=5),
        "dampening": Live(steps=5, others={"momentum": 0.9})}

CASES = [
    # eps floors sqrt(v), about |g| here: tiny gradients make it act (no decay to dwarf them)
    Case("adopt", lambda: fo.adopt(lr=0.01, weight_decay=0.1),
         live={"eps": Live(grads_scale=1e-9, others={"weight_decay": 0.0})}),
    Case("scale_by_adopt_nesterov_no_clipping",
         lambda: fo.scale_by_adopt(betas=(0.8, 0.99), nesterov=True, clip_value=None),
         live={"eps": Live(grads_scale=1e-9)}),
    # eps and eps_root (1e-16) only act against a root of that size: larger values show them
    Case("acprop", lambda: fo.acprop(lr=0.01, weight_decay=0.1),
         live={"eps": Live(value=1.0), "eps_root": Live(value=0.5)}),
    Case("ademamix", lambda: fo.ademamix(lr=0.01, weight_decay=0.1),
         live={"eps": Live(value=0.5)}),
    Case("simplified_ademamix", lambda: fo.simplified_ademamix(lr=0.01, weight_decay=0.1),
         live={"eps": Live(value=0.5)}),
    Case("madgrad", lambda: fo.madgrad(lr=0.05, weight_decay=0.1)),
    Case("sophia", lambda: fo.sophia(lr=0.05, weight_decay=0.1, update_interval=2),
         complex=False, extra=lambda grads: {"hvp_fn": quartic_hvp}, live=_SOPHIA),
    Case("sam_sgd", lambda: fo.sam_sgd(lr=0.1, weight_decay=0.1), live=_SAM),
    Case("sam_opaque",
         lambda: fo.sam(fo.sgd(lr=0.1, momentum=0.9), fo.chain(
             fo.normalize(), fo.scale_by_learning_rate(0.05)), sync_period=3, opaque_mode=True),
         extra=lambda grads: {"grad_fn": quartic_grad}),
    Case("normalize_adaptive", lambda: fo.normalize(1e-3, adaptive=True)),
    # Adam's eps against a root of about |g|: tiny gradients (projected or not) make it act
    Case("galore_adamw", lambda: fo.galore_adamw(lr=0.01, weight_decay=0.1, rank=1,
                                                 update_proj_gap=2, svd_dtype=None),
         complex=False, live={"eps": Live(grads_scale=1e-9)}, excluded=(
             ("test_capturable_fake_cuda_trace",
              "torch.linalg.svd synchronizes a CUDA device with the host (torch's documented "
              "behaviour): GaLore's projector refresh cannot be captured in a CUDA graph"),)),
    Case("dpsgd", lambda: fo.dpsgd(lr=0.1, l2_norm_clip=1.0, seed=3), complex=False,
         grads=per_example),
]

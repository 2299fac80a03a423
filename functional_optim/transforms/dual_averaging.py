r"""Dual averaging: MADGRAD (Defazio & Jelassi, 2021).

A pointwise rule (per leaf, over tensor lists, or fused in a chain) with a per-parameter ``step``
count (0-d int64); complex parameters are treated as pairs of reals.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import LIKE, Pointwise, PointwiseCall, init_count, scalar_dtype
from ..base import (
    Transform,
    check_hparam,
    check_state,
    missing_params,
    pointwise_transform,
    resolve_hparams,
)

__all__ = ["ScaleByMadgradState", "scale_by_madgrad"]


class ScaleByMadgradState(NamedTuple):
    """State of :func:`scale_by_madgrad`.

    Attributes:
        step: per-parameter step count (0-d int64).
        grad_sum_sq: the weighted sum of squared gradients :math:`G`.
        s: the weighted sum of gradients :math:`s`.
        x0: the parameters at ``init`` (a copy).
    """

    step: Any
    grad_sum_sq: Any
    s: Any
    x0: Any


def _safe_cbrt(x: torch.Tensor) -> torch.Tensor:
    """:math:`x^{1/3}` of a nonnegative ``x``, with a zero (not infinite) gradient at 0."""
    if not torch.is_grad_enabled():
        return torch.pow(x, 1 / 3)
    positive = x > 0
    return torch.where(positive, torch.pow(torch.where(positive, x, 1.0), 1 / 3), 0.0)


def _madgrad_rule(h, g, t, big_g, s, x0, p):
    eps, momentum = h["eps"], h["momentum"]
    lamb = (h["lr"] + eps) * torch.sqrt(t.to(scalar_dtype(g)) + 1)
    big_g = big_g + lamb * torch.square(g)
    s = s + lamb * g  # (the last read of g: a fused chain may hand it over to overwrite)
    z = x0 - s / (_safe_cbrt(big_g) + eps)
    return (1 - momentum) * z + momentum * p - p, t + 1, big_g, s, x0


def scale_by_madgrad(lr: float = 1e-2, momentum: float = 0.9, eps: float = 1e-6) -> Transform:
    r"""MADGRAD's momentumized dual averaging (Defazio & Jelassi, 2021, *Adaptivity without
    Compromise: A Momentumized, Adaptive, Dual Averaged Gradient Method for Stochastic
    Optimization*), as optax's ``contrib.scale_by_madgrad`` and the authors' code compute it.

    With the step count :math:`k` from 0 and :math:`x_0` the parameters at ``init``:

    .. math::
        \lambda_k = (\eta + \epsilon)\sqrt{k + 1}, \quad
        G \leftarrow G + \lambda_k g^2, \quad s \leftarrow s + \lambda_k g, \\
        z = x_0 - \frac{s}{G^{1/3} + \epsilon}, \qquad
        u = (1-\mu) z + \mu\, p - p

    The output is the whole step (the learning rate is inside: put no learning-rate block after
    it). Needs ``params``. A schedule of ``lr`` is :func:`functional_optim.inject_hparams`
    (optax's schedule is read at the same count). :math:`\sqrt{k+1}` is computed in float64
    (the scalar precision); optax takes it of its int32 count, so in float32 even in float64
    runs: float64 trajectories agree with optax's to ~1e-8 relative.

    Args:
        lr: ``η`` (default 1e-2, the authors').
        momentum: ``μ`` in [0, 1) (default 0.9).
        eps: ``ε`` (default 1e-6).
    """
    owner = "scale_by_madgrad"
    check_hparam(owner, "lr", lr, ge=0)
    check_hparam(owner, "momentum", momentum, ge=0, lt=1)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"lr": lr, "momentum": momentum, "eps": eps}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByMadgradState(init_count(params), zeros(params), zeros(params),
                                   _tree.map(torch.clone, params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByMadgradState)
        missing_params(owner, updates, params, "the step moves them towards a dual average")
        return PointwiseCall(_madgrad_rule, h,
                             (state.step, state.grad_sum_sq, state.s, state.x0),
                             inputs=(params,) if params is not None else (),
                             finish=lambda new: ScaleByMadgradState(*new),
                             input_names=("params",), state_like=(None, LIKE, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))

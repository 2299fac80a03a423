"""Optimistic (extrapolated) gradients for min-max games: :func:`scale_by_optimistic_gradient`."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import LIKE, Pointwise, PointwiseCall, init_count
from ..base import Transform, check_hparam, check_state, pointwise_transform, resolve_hparams

__all__ = ["ScaleByOptimisticGradientState", "scale_by_optimistic_gradient"]


class ScaleByOptimisticGradientState(NamedTuple):
    """State of :func:`scale_by_optimistic_gradient`.

    Attributes:
        step: per-parameter step count (0-d int64); at 0 there is no previous update.
        prev_grad: the previous update :math:`g_{t-1}`.
    """

    step: Any
    prev_grad: Any


def _optimistic_rule(h, g, t, prev):
    alpha, beta = h["alpha"], h["beta"]
    new_prev = g.clone()
    prev_or_g = torch.where(t == 0, g, prev)  # the first step has no previous update
    # (g read last: on the fused path it may be overwritten)
    return (alpha + beta) * g - beta * prev_or_g, t + 1, new_prev


def scale_by_optimistic_gradient(alpha: float = 1.0, beta: float = 1.0) -> Transform:
    r"""Generalized optimistic gradients (Mokhtari et al., 2020, *A Unified Analysis of
    Extra-gradient and Optimistic Gradient Methods for Saddle Point Problems*), as optax's
    ``scale_by_optimistic_gradient``.

    .. math::
        u_t = (\alpha + \beta)\, g_t - \beta\, g_{t-1}, \qquad g_0 = g_1

    (so the first update is :math:`\alpha g_1`); ``α = β = 1`` is optimistic gradient descent
    :math:`2 g_t - g_{t-1}`. Pointwise; complex updates as they are (a linear map).

    Args:
        alpha: ``α`` (default 1).
        beta: ``β``, the weight of the negative momentum (default 1).
    """
    owner = "scale_by_optimistic_gradient"
    check_hparam(owner, "alpha", alpha)
    check_hparam(owner, "beta", beta)
    defaults = {"alpha": alpha, "beta": beta}

    def init(params):
        return ScaleByOptimisticGradientState(init_count(params), _tree.zeros_like(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByOptimisticGradientState)
        return PointwiseCall(_optimistic_rule, h, (state.step, state.prev_grad),
                             finish=lambda new: ScaleByOptimisticGradientState(*new),
                             state_like=(None, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner))

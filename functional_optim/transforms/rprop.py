r"""Resilient backpropagation (Rprop): torch.optim.Rprop's and optax's computations, one block.

Written once as math on tensors (see :func:`functional_optim._execute.elementwise`); keeps a
per-parameter ``step`` count (0-d int64), never syncs with the host (branches are
``torch.where``) and treats complex parameters as pairs of reals, as torch.optim does.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import LIKE, Pointwise, PointwiseCall, init_count
from ..base import (
    Transform,
    check_choice,
    check_hparam,
    check_pair,
    check_state,
    pointwise_transform,
    resolve_hparams,
)
from .adaptive import VARIANTS

__all__ = ["ScaleByRpropState", "scale_by_rprop"]


class ScaleByRpropState(NamedTuple):
    """State of :func:`scale_by_rprop`.

    Attributes:
        step: per-parameter step count (0-d int64).
        prev: the previous gradient (zero where its sign flipped); in the optax variant the
            previous step :math:`d_{t-1}`.
        step_size: per-element step sizes (set to ``init_step_size`` at the first update).
    """

    step: Any
    prev: Any
    step_size: Any


def _rprop_rule(h, g, t, prev, size, *, optax):
    eta_minus, eta_plus = h["etas"]
    size_min, size_max = h["step_sizes"]
    size_old = torch.where(t == 0, h["init_step_size"], size).to(size.dtype)
    agree = prev * g  # (not g * prev: g may be a fused run's donated temporary, read below)
    factor = torch.where(agree > 0, eta_plus,
                         torch.where(agree < 0, eta_minus, torch.ones_like(agree)))
    size = torch.clamp(torch.clamp(size_old * factor.to(size.dtype), min=size_min), max=size_max)
    if optax:  # the size moves where agree != 0; the update is the last step's
        size = torch.where(agree == 0, size_old, size)
        step = torch.where(agree < 0, 0.0, size * torch.sign(g))
        return -torch.where(agree < 0, 0.0, prev), t + 1, step, size
    g = torch.where(agree < 0, 0.0, g)
    return -torch.sign(g) * size, t + 1, g, size


def scale_by_rprop(init_step_size: float = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
                   step_sizes: tuple[float, float] = (1e-6, 50.0), *,
                   variant: str = "torch") -> Transform:
    r"""Resilient backpropagation (Riedmiller & Braun, 1993, *A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP Algorithm*), as torch.optim.Rprop computes it.

    .. math::
        s_t = \mathrm{clip}\big(s_{t-1} \cdot
              \begin{cases}\eta_+ & g_t g_{t-1} > 0\\ \eta_- & g_t g_{t-1} < 0\\
              1 & \text{else}\end{cases},\ s_{min},\ s_{max}\big), \qquad
        \tilde g_t = \begin{cases} 0 & g_t g_{t-1} < 0 \\ g_t & \text{else}\end{cases}, \qquad
        u_t = -\mathrm{sign}(\tilde g_t)\, s_t

    with :math:`s_0 = ` ``init_step_size`` (read at the first update) and :math:`\tilde g_t`
    kept as the next step's :math:`g_{t-1}`. The output is already a descent step (add it to the
    parameters; no learning-rate block after it). Complex parameters as pairs of reals.

    ``variant="optax"`` is optax's ``scale_by_rprop`` followed by ``scale(-1)`` (its
    ``rprop``): the state keeps the step :math:`d_t = \mathrm{sign}(g_t)\,s_t` (0 where the sign
    flipped) instead of the gradient, and with :math:`c_t = g_t d_{t-1}`,

    .. math::
        s_t = \begin{cases} s_{t-1} & c_t = 0 \\
              \mathrm{clip}(s_{t-1}\,(\eta_+ \text{ if } c_t > 0 \text{ else } \eta_-),
              s_{min}, s_{max}) & \text{else}\end{cases}, \qquad
        d_t = \begin{cases} 0 & c_t < 0 \\ \mathrm{sign}(g_t)\,s_t & \text{else}\end{cases},
        \qquad
        u_t = -\begin{cases} 0 & c_t < 0 \\ d_{t-1} & \text{else}\end{cases}

    so optax applies the *previous* step's :math:`d_{t-1}` (the first update is 0: optax 0.2.8
    returns its old ``prev_updates``), and does not clip a step size it does not move.

    Args:
        init_step_size: ``s_0`` (torch.optim.Rprop's ``lr``; default 1e-2).
        etas: ``(η-, η+)`` with ``0 < η- < 1 < η+`` (default ``(0.5, 1.2)``).
        step_sizes: ``(s_min, s_max)`` (default ``(1e-6, 50)``).
        variant: ``"torch"`` or ``"optax"`` (static; see above).
    """
    owner = "scale_by_rprop"
    check_hparam(owner, "init_step_size", init_step_size, ge=0)
    check_pair(owner, "etas", etas)
    check_hparam(owner, "etas[0]", etas[0], gt=0, lt=1)
    check_hparam(owner, "etas[1]", etas[1], gt=1)
    check_pair(owner, "step_sizes", step_sizes)
    check_hparam(owner, "step_sizes[0]", step_sizes[0], ge=0)
    check_hparam(owner, "step_sizes[1]", step_sizes[1], ge=0)
    check_choice(owner, "variant", variant, VARIANTS)
    defaults = {"init_step_size": init_step_size, "etas": tuple(etas),
                "step_sizes": tuple(step_sizes)}
    rule = functools.partial(_rprop_rule, optax=variant == "optax")

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByRpropState(init_count(params), zeros(params), zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByRpropState)
        return PointwiseCall(rule, h, (state.step, state.prev, state.step_size),
                             finish=lambda new: ScaleByRpropState(*new),
                             state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))

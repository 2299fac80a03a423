r"""Mechanic: a learned scale for any optimizer's updates (Cutkosky, Defazio & Mehta, 2023,
*Mechanic: A Learning Rate Tuner*), as optax's ``contrib.mechanize`` computes it.

Its scalars (``num_betas`` of each of its four sums) are global 0-d tensors of the scalar dtype,
on the parameters' device (the policy of :mod:`functional_optim.transforms.parameter_free`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from .. import _execute
from .._execute import LIKE, cast_hparams, elementwise, is_off, safe_sqrt
from ..base import (
    HParamError,
    Transform,
    _check_transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from .parameter_free import _clone, _square, global_scalar, global_sum, initial

__all__ = ["MechanicState", "mechanize"]


class MechanicState(NamedTuple):
    """State of :func:`mechanize`.

    Attributes:
        step: updates so far (0-d int64, global).
        r: the rewards :math:`r`, one per :math:`\\beta` (a tuple of ``num_betas`` global
            scalars).
        m: the running maxima :math:`m`, one per :math:`\\beta`.
        v: the running sums of squares :math:`v`, one per :math:`\\beta`.
        s: the scales :math:`s`, one per :math:`\\beta`.
        x0: the reference point :math:`x_0` (the parameters at the first update).
        base: the base optimizer's state.
    """

    step: Any
    r: Any
    m: Any
    v: Any
    s: Any
    x0: Any
    base: Any


def _mechanic_rule(h, u, x0, p, *, first):
    x0 = torch.where(first, p, x0)
    delta = (x0 - p) / h["shift"] - u
    return (x0 - h["scale"] * delta) - p, x0


def mechanize(base: Transform, weight_decay: float = 1e-2, eps: float = 1e-8,
              s_init: float = 1e-6, *, num_betas: int = 6) -> Transform:
    r"""Mechanic (Cutkosky, Defazio & Mehta, 2023, *Mechanic: A Learning Rate Tuner*): learns
    the scale of ``base``'s updates, as optax's ``contrib.mechanize`` computes it.

    With :math:`u_t` the base update, :math:`S_{t-1} = \sum_j s_{t-1,j}`, the gradients'
    and parameters' global norms, and :math:`\beta_j = 1 - 10^{-j}` (:math:`j = 1..n`):

    .. math::
        \tilde g_t = g_t + \lambda S_{t-1}\frac{\|g_t\|}{\|x_t\| + \epsilon}\,x_t, \qquad
        \Delta_{t-1} = \frac{x_0 - x_t}{S_{t-1} + \epsilon}, \qquad
        h_t = \langle \tilde g_t, \Delta_{t-1}\rangle, \\
        m_t = \max(\beta m_{t-1}, |h_t| + \epsilon), \qquad
        v_t = \beta^2 v_{t-1} + h_t^2, \qquad
        r_t = \beta r_{t-1} + \mathrm{clip}(h_t, -m_{t-1}, m_{t-1})\,s_{t-1}, \\
        s_t = \frac{\tfrac{s_{init}}{n} m_t + \max(r_t, 0)}{\sqrt{v_t} + \epsilon}, \qquad
        x_{t+1} = x_0 - \Big(\sum_j s_{t,j}\Big)(\Delta_{t-1} - u_t)

    (vectors over :math:`j`), with :math:`s_0 = s_{init}` and :math:`x_0` the parameters at the
    first update (a model loaded after ``init`` is taken as it is then). ``base`` gets the raw
    gradients (and the update's keyword arguments). The output is the whole step. Needs
    ``params``; the scalars are global (see the module's policy). The hparams are
    ``{"weight_decay", "eps", "s_init", "base": base.hparams}``.

    Args:
        base: the optimizer whose updates are scaled (with a learning rate around 1).
        weight_decay: :math:`\lambda`, Mechanic's own decay (default 1e-2).
        eps: :math:`\epsilon` (default 1e-8).
        s_init: :math:`s_{init}` (default 1e-6).
        num_betas: :math:`n` (structural int >= 1; default 6).
    """
    owner = "mechanize"
    _check_transform(base, owner)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "s_init", s_init, gt=0)
    if not isinstance(num_betas, int) or isinstance(num_betas, bool) or num_betas < 1:
        raise HParamError(f"{owner}: num_betas must be an int >= 1, got {num_betas!r}")
    defaults = {"weight_decay": weight_decay, "eps": eps, "s_init": s_init,
                "base": base.hparams}

    def init(params):
        def scalars(value=0.0):
            return tuple(global_scalar(params, value) for _ in range(num_betas))

        return MechanicState(global_scalar(params, 0).long(), scalars(), scalars(), scalars(),
                             scalars(initial(s_init)), _clone(params), base.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, MechanicState)
        if missing_params(owner, updates, params, "it steps from x_0"):
            return updates, state
        base_u, base_state = base.update(updates, state.base, params, h["base"], **extra)
        r, m, v, s = (torch.stack(x) for x in (state.r, state.m, state.v, state.s))
        hs = cast_hparams({k: h[k] for k in ("weight_decay", "eps", "s_init")}, s)
        eps = hs["eps"]
        first = state.step == 0
        s = torch.where(first, hs["s_init"], s)
        s_sum = s.sum()
        shift = s_sum + eps
        if is_off(h["weight_decay"]):
            coef = None
        else:
            grad_norm = safe_sqrt(global_sum(owner, s_sum, _square, updates, updates),
                                  nonnegative=True)
            param_norm = safe_sqrt(global_sum(owner, s_sum, _square, updates, params),
                                   nonnegative=True)
            coef = hs["weight_decay"] * s_sum * grad_norm / (param_norm + eps)

        def inner(g, p, x0):
            decayed = g if coef is None else g + coef * p
            return decayed * ((torch.where(first, p, x0) - p) / shift)

        h_t = global_sum(owner, s_sum, inner, updates, updates, params, state.x0)
        betas = 1 - 0.1 ** torch.arange(1, num_betas + 1, dtype=s.dtype, device=s.device)
        r = betas * r + torch.clamp(h_t, -m, m) * s
        m = torch.maximum(betas * m, torch.abs(h_t) + eps)
        v = betas ** 2 * v + h_t ** 2
        wealth = (hs["s_init"] / num_betas) * m + torch.clamp(r, min=0.0)
        s = wealth / (safe_sqrt(v, nonnegative=True) + eps)
        out, x0 = elementwise(functools.partial(_mechanic_rule, first=first),
                              {"shift": shift, "scale": s.sum()}, base_u, (state.x0,),
                              (params,), name=owner, input_names=("params",),
                              state_like=(LIKE,))
        return out, MechanicState(state.step + 1, *(tuple(x.unbind()) for x in (r, m, v, s)),
                                  x0, base_state)

    return Transform(init, _execute.owning(update, [base]), defaults)

r"""Adam variants whose step is divided by the *previous* second-moment estimate, so that the
current gradient and its scaling are independent: ADOPT (Taniguchi et al., 2024) and ACProp
(Zhuang et al., 2021).

Both are written once as pointwise rules (run per leaf, over tensor lists, or fused in a
chain), keep a per-parameter ``step`` count (0-d int64), branch with :func:`torch.where` (no
host sync) and treat complex parameters as pairs of reals, as torch.optim's Adam does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    Pointwise,
    PointwiseCall,
    ema_square,
    init_count,
    is_off,
    lerp,
    safe_sqrt,
    scalar_dtype,
)
from ..base import (
    HParamError,
    Transform,
    check_betas,
    check_hparam,
    check_state,
    pointwise_transform,
    resolve_hparams,
)

__all__ = ["ScaleByAdoptState", "scale_by_adopt", "adopt_clip_value", "ScaleByAcpropState",
           "scale_by_acprop"]


class ScaleByAdoptState(NamedTuple):
    """State of :func:`scale_by_adopt`.

    Attributes:
        step: per-parameter step count (0-d int64).
        exp_avg: the momentum of the normalized gradients :math:`m`.
        exp_avg_sq: the second moment :math:`v` (the first gradient's square after one step).
    """

    step: Any
    exp_avg: Any
    exp_avg_sq: Any


def adopt_clip_value(step: torch.Tensor) -> torch.Tensor:
    r"""ADOPT's default clipping bound :math:`c_t = t^{1/4}` at step count ``t`` (from 0)."""
    return step ** 0.25


def _adopt_rule(h, g, t, m, v, *, nesterov, clip_value):
    b1, b2 = h["betas"]
    first, dtype = t == 0, g.dtype
    denominator = torch.clamp(safe_sqrt(v, nonnegative=True), min=h["eps"])
    v = torch.where(first, torch.square(g), ema_square(v, g, b2))
    u = g / denominator  # (the last read of g: a fused chain may hand it over to overwrite)
    if clip_value is not None:
        bound = clip_value(t.to(scalar_dtype(g)))
        u = torch.clamp(u, -bound, bound)
    u = u.to(dtype)  # (a 0-d leaf is promoted by the 0-d float64 eps and bound)
    m = torch.where(first, m, lerp(m, u, 1 - b1))
    out = torch.where(first, m, lerp(m, u, 1 - b1)) if nesterov else m
    return out, t + 1, m, v


def scale_by_adopt(betas: tuple[float, float] = (0.9, 0.9999), eps: float = 1e-6, *,
                   nesterov: bool = False,
                   clip_value: Callable[[torch.Tensor], Any] | None = adopt_clip_value
                   ) -> Transform:
    r"""ADOPT's scaling (Taniguchi et al., 2024, *ADOPT: Modified Adam Can Converge with Any
    β2 with the Optimal Rate*), as optax's ``contrib.scale_by_adopt`` computes it.

    With the step count :math:`t` from 0 and :math:`v_{t-1}` the second moment *before* this
    step's gradient,

    .. math::
        \tilde g_t = \operatorname{clip}\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},
                     -c_t, c_t\right), \qquad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) \tilde g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad u_t = m_t

    except at :math:`t = 0`, where only :math:`v_0 = g_0^2` is set (the update is
    :math:`m = 0`). Nesterov: :math:`u_t = \beta_1 m_t + (1-\beta_1)\tilde g_t`. The bound is
    :math:`c_t` = ``clip_value(t)`` (:func:`adopt_clip_value`: :math:`t^{1/4}`), or no clipping
    with ``clip_value=None`` (optax's ``use_clipping=False``).

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.9999)``).
        eps: ``ε`` (default 1e-6).
        nesterov: Nesterov momentum (structural).
        clip_value: ``t -> c_t`` on a 0-d float64 count (structural; ``None``: no clipping).
    """
    owner = "scale_by_adopt"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    if clip_value is not None and not callable(clip_value):
        raise HParamError(f"{owner}: clip_value must be a function of the step or None, got "
                          f"{clip_value!r}")
    defaults = {"betas": tuple(betas), "eps": eps}
    rule = functools.partial(_adopt_rule, nesterov=nesterov, clip_value=clip_value)

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByAdoptState(init_count(params), zeros(params), zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByAdoptState)
        return PointwiseCall(rule, h, (state.step, state.exp_avg, state.exp_avg_sq),
                             finish=lambda new: ScaleByAdoptState(*new),
                             state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


class ScaleByAcpropState(NamedTuple):
    """State of :func:`scale_by_acprop`.

    Attributes:
        step: per-parameter step count (0-d int64).
        exp_avg: the first moment :math:`m`.
        exp_avg_var: the running variance of the prediction errors :math:`s`.
    """

    step: Any
    exp_avg: Any
    exp_avg_var: Any


def _acprop_rule(h, g, t, m, s):
    b1, b2 = h["betas"]
    first = t == 0
    correction = 1 - b2 ** torch.where(first, t + 1, t).to(scalar_dtype(g))
    s_hat = torch.where(first, torch.ones_like(s), s / correction)
    u = g / (safe_sqrt(s_hat, nonnegative=True) + h["eps"])
    s = ema_square(s, g - m, b2)
    if not is_off(h["eps_root"]):
        s = s + h["eps_root"]
    return u, t + 1, lerp(m, g, 1 - b1), s


def scale_by_acprop(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16,
                    eps_root: float = 1e-16) -> Transform:
    r"""ACProp's scaling (Zhuang et al., 2021, *Momentum Centering and Asynchronous Update for
    Adaptive Gradient Methods*), as optax's ``contrib.scale_by_acprop`` computes it.

    With the step count :math:`t` from 0 and :math:`s_{t-1}` the variance estimate before this
    step,

    .. math::
        u_t = \frac{g_t}{\sqrt{s_{t-1} / (1 - \beta_2^{t})} + \epsilon}
        \ (u_0 = g_0 / (1 + \epsilon)), \qquad
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_{t-1})^2 + \epsilon_{root}, \qquad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t

    (the prediction error against the *previous* mean, as optax and the authors' code).

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-16).
        eps_root: ``ε_root``, added to :math:`s` every step (default 1e-16; keep it positive
            for meta-gradients).
    """
    owner = "scale_by_acprop"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "eps_root", eps_root, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps, "eps_root": eps_root}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByAcpropState(init_count(params), zeros(params), zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByAcpropState)
        return PointwiseCall(_acprop_rule, h, (state.step, state.exp_avg, state.exp_avg_var),
                             finish=lambda new: ScaleByAcpropState(*new),
                             state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))

"""Adam's relatives that change its second moment: AdaBelief (the variance of the gradient
around its mean), Yogi (an additive update of the second moment) and Adan (Nesterov momentum
from gradient differences), as optax computes them.

Each keeps a per-parameter ``step`` count (0-d int64), is one pointwise rule (see
:func:`functional_optim._execute.elementwise`; chains fuse it with its neighbours) and treats
complex parameters as pairs of reals, as this library's Adam does (optax squares their modulus
instead, which differs for complex parameters only).
"""

from __future__ import annotations

import functools
from numbers import Number
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
from .moments import corrected_first_moment

__all__ = [
    "ScaleByBeliefState",
    "scale_by_belief",
    "ScaleByYogiState",
    "scale_by_yogi",
    "ScaleByAdanState",
    "scale_by_adan",
]


def _pointwise(owner: str, rule, defaults: dict, init, state_cls: type,
               donate: tuple[bool, ...]) -> Transform:
    """The pointwise transform running ``rule`` on the state fields of ``state_cls``."""

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, state_cls)
        return PointwiseCall(rule, h, tuple(state), finish=lambda new: state_cls(*new),
                             donate_state=donate, state_like=(None,) + (LIKE,) * (len(state) - 1))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


# --------------------------------------------------------------------------------------------
# AdaBelief


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`.

    Attributes:
        step: per-parameter step count (0-d int64).
        mu: first moment :math:`m_t`.
        nu: running mean of the squared prediction error :math:`s_t` (``ε_root`` included).
    """

    step: Any
    mu: Any
    nu: Any


def _belief_rule(h, g, t, m, s, *, nesterov):
    b1, b2 = h["betas"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    m = lerp(m, g, 1 - b1)
    s = ema_square(s, m - g, b2)  # (m - g: g stays intact for the nesterov term)
    if not is_off(h["eps_root"]):
        s = s + h["eps_root"]
    m_hat = corrected_first_moment(m, g, b1, tf, nesterov)
    u = m_hat / (safe_sqrt(s / (1 - b2**tf), nonnegative=True) + h["eps"])
    return u, t, m, s


def scale_by_belief(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16,
                    eps_root: float = 1e-16, *, nesterov: bool = False) -> Transform:
    r"""AdaBelief's scaling (Zhuang et al., 2020, *AdaBelief Optimizer: Adapting Stepsizes by
    the Belief in Observed Gradients*), as optax's ``scale_by_belief``.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root}, \\
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{s_t / (1-\beta_2^t)} + \epsilon}

    (``ε_root`` accumulates in the state, as optax's and the paper's Algorithm 2). With
    ``nesterov`` the first moment is Dozat's look-ahead
    :math:`\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)`.

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` added to the root (default 1e-16, optax's; the paper's 1e-8 with
            ``eps_root`` 0).
        eps_root: ``ε_root`` (default 1e-16; nonzero keeps meta-gradients finite).
        nesterov: Nesterov's first moment (structural; default False).
    """
    owner = "scale_by_belief"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "eps_root", eps_root, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps, "eps_root": eps_root}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByBeliefState(init_count(params), zeros(params), zeros(params))

    rule = functools.partial(_belief_rule, nesterov=nesterov)
    return _pointwise(owner, rule, defaults, init, ScaleByBeliefState, (True, True, True))


# --------------------------------------------------------------------------------------------
# Yogi


class ScaleByYogiState(NamedTuple):
    """State of :func:`scale_by_yogi`.

    Attributes:
        step: per-parameter step count (0-d int64).
        mu: first moment (starts at ``initial_accumulator_value``).
        nu: second moment (starts at ``initial_accumulator_value``).
    """

    step: Any
    mu: Any
    nu: Any


def _yogi_rule(h, g, t, m, v):
    b1, b2 = h["betas"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    m = lerp(m, g, 1 - b1)
    g2 = g * g
    v = v - (1 - b2) * torch.sign(v - g2) * g2
    second = v / (1 - b2**tf)
    if not is_off(h["eps_root"]):
        second = second + h["eps_root"]
    u = (m / (1 - b1**tf)) / (safe_sqrt(second) + h["eps"])
    return u, t, m, v


def scale_by_yogi(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-3,
                  eps_root: float = 0.0, initial_accumulator_value: float = 1e-6) -> Transform:
    r"""Yogi's scaling (Zaheer et al., 2018, *Adaptive Methods for Nonconvex Optimization*), as
    optax's ``scale_by_yogi``: Adam whose second moment moves by an additive step.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = v_{t-1} - (1-\beta_2)\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2, \\
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}}
              + \epsilon}

    with :math:`m_0 = v_0 = ` ``initial_accumulator_value`` (both, as optax).

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` added to the root (default 1e-3, the paper's and optax's).
        eps_root: ``ε_root`` added inside the root (default 0).
        initial_accumulator_value: :math:`m_0 = v_0` (structural: read by ``init``; default
            1e-6).
    """
    owner = "scale_by_yogi"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "eps_root", eps_root, ge=0)
    if not isinstance(initial_accumulator_value, Number) or isinstance(
            initial_accumulator_value, bool):
        raise HParamError(f"{owner}: initial_accumulator_value is read at init; give a number, "
                          f"got {initial_accumulator_value!r}")
    check_hparam(owner, "initial_accumulator_value", initial_accumulator_value, ge=0)
    start = float(initial_accumulator_value)
    defaults = {"betas": tuple(betas), "eps": eps, "eps_root": eps_root}

    def init(params):
        def full(p):
            return torch.full_like(p, complex(start, start) if p.is_complex() else start)

        return ScaleByYogiState(init_count(params), _tree.map(full, params),
                                _tree.map(full, params))

    # (the old v is read twice: not donated)
    return _pointwise(owner, _yogi_rule, defaults, init, ScaleByYogiState, (True, True, False))


# --------------------------------------------------------------------------------------------
# Adan


class ScaleByAdanState(NamedTuple):
    """State of :func:`scale_by_adan`.

    Attributes:
        step: per-parameter step count (0-d int64).
        mu: running mean of the gradients :math:`m_t`.
        mu_diff: running mean of the gradient differences :math:`v_t`.
        nu: running mean of the squared Nesterov gradients :math:`n_t`.
        prev_grad: the previous update :math:`g_{t-1}` (zeros before the first).
    """

    step: Any
    mu: Any
    mu_diff: Any
    nu: Any
    prev_grad: Any


def _adan_rule(h, g, t, m, v, n, prev):
    b1, b2, b3 = h["betas"]
    # (g is never the first operand of an op: on the fused path that could overwrite it)
    diff = torch.where(t > 0, -(prev - g), 0.0)  # no difference at the first step
    m = lerp(m, g, 1 - b1)
    v = lerp(v, diff, 1 - b2)
    n = ema_square(n, (1 - b2) * diff + g, b3)
    t = t + 1
    tf = t.to(scalar_dtype(g))
    second = n / (1 - b3**tf)
    if not is_off(h["eps_root"]):
        second = second + h["eps_root"]
    u = (m / (1 - b1**tf) + (1 - b2) * (v / (1 - b2**tf))) / (
        safe_sqrt(second, nonnegative=True) + h["eps"])
    return u, t, m, v, n, g.clone()


def scale_by_adan(betas: tuple[float, float, float] = (0.98, 0.92, 0.99), eps: float = 1e-8,
                  eps_root: float = 0.0) -> Transform:
    r"""Adan's scaling (Xie et al., 2022, *Adan: Adaptive Nesterov Momentum Algorithm for
    Faster Optimizing Deep Models*, Algorithm 1), as optax's ``scale_by_adan``.

    With :math:`\Delta_t = g_t - g_{t-1}` (:math:`\Delta_1 = 0`):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \Delta_t, \\
        n_t = \beta_3 n_{t-1} + (1-\beta_3)\big(g_t + (1-\beta_2)\Delta_t\big)^2, \\
        u_t = \frac{m_t/(1-\beta_1^t) + (1-\beta_2)\, v_t/(1-\beta_2^t)}
              {\sqrt{n_t/(1-\beta_3^t) + \epsilon_{root}} + \epsilon}

    (optax's bias-corrected form; the betas are the decays of the running means, so optax's
    ``b1 = 0.98`` is the paper's :math:`1 - \beta_1 = 0.02`).

    Args:
        betas: ``(β1, β2, β3)`` (default ``(0.98, 0.92, 0.99)``).
        eps: ``ε`` added to the root (default 1e-8).
        eps_root: ``ε_root`` added inside the root (default 0; optax's ``adan`` uses 1e-8).
    """
    owner = "scale_by_adan"
    check_beta_triple(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "eps_root", eps_root, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps, "eps_root": eps_root}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByAdanState(init_count(params), zeros(params), zeros(params), zeros(params),
                                zeros(params))

    # (the previous gradient is replaced by a copy of the update, not updated in place)
    return _pointwise(owner, _adan_rule, defaults, init, ScaleByAdanState,
                      (True, True, True, True, False))


def check_beta_triple(owner: str, betas: Any) -> None:
    """``betas`` must be three values in ``[0, 1)`` (Adan's)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 3:
        raise HParamError(f"{owner}: betas must be a triple (β1, β2, β3), got {betas!r}")
    for i, b in enumerate(betas):
        check_hparam(owner, f"betas[{i}]", b, ge=0, lt=1)

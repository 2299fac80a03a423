"""Second moments in less memory than the parameters: NovoGrad's one per layer and SM3's cover
of row and column accumulators, as optax computes them."""

from __future__ import annotations

import functools
from numbers import Number
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import LIKE, elementwise, full, init_count, is_off, lerp, safe_sqrt
from ..base import (
    HParamError,
    Transform,
    check_betas,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from ._leafwise import leafwise

__all__ = ["ScaleByNovogradState", "scale_by_novograd", "ScaleBySm3State", "scale_by_sm3"]


# --------------------------------------------------------------------------------------------
# NovoGrad


class ScaleByNovogradState(NamedTuple):
    """State of :func:`scale_by_novograd`.

    Attributes:
        step: per-parameter step count (0-d int64).
        mu: the momentum :math:`m_t` (the update), shaped like the parameters.
        nu: the layer's second moment :math:`v_t`, one 0-d value per parameter.
    """

    step: Any
    mu: Any
    nu: Any


def _novograd_rule(h, g, t, m, nu, *p):
    b1, b2 = h["betas"]
    norm2 = full(torch.linalg.vector_norm(g)).square()
    nu = torch.where(t == 0, norm2, nu * b2 + (1 - b2) * norm2)
    step = g / (safe_sqrt(nu + h["eps_root"], nonnegative=True) + h["eps"])
    if p:  # (a weight decay that is not the number 0)
        step = step + h["weight_decay"] * p[0]
    m = m * b1 + step  # (m_0 = 0: the first step is m_1 = step, as optax)
    return m, t + 1, m, nu


def scale_by_novograd(betas: tuple[float, float] = (0.9, 0.25), eps: float = 1e-8,
                      eps_root: float = 0.0, weight_decay: float = 0.0) -> Transform:
    r"""NovoGrad's layer-wise normalized momentum (Ginsburg et al., 2019, *Stochastic Gradient
    Methods with Layer-wise Adaptive Moments for Training of Deep Networks*), as optax's
    ``scale_by_novograd``.

    Per leaf (a layer), with one second moment for the whole leaf:

    .. math::
        v_1 = \|g_1\|^2, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2)\|g_t\|^2, \\
        m_1 = s_1, \quad m_t = \beta_1 m_{t-1} + s_t, \qquad
        s_t = \frac{g_t}{\sqrt{v_t + \epsilon_{root}} + \epsilon} + \lambda p_{t-1},
        \qquad u_t = m_t

    (no :math:`(1-\beta_1)`, no bias correction). The weight decay reads ``params``, unless
    ``weight_decay`` is the number 0 at update time. Complex parameters as pairs of reals (the
    norm is their modulus's).

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.25)``).
        eps: ``ε`` added to the root (default 1e-8; optax's ``novograd`` uses 1e-6).
        eps_root: ``ε_root`` added inside the root (default 0).
        weight_decay: ``λ`` (default 0).
    """
    owner = "scale_by_novograd"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "eps_root", eps_root, ge=0)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps, "eps_root": eps_root,
                "weight_decay": weight_decay}

    def init(params):
        return ScaleByNovogradState(init_count(params), _tree.zeros_like(params), _tree.map(
            lambda p: torch.zeros((), dtype=p.dtype, device=p.device), params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByNovogradState)
        decay = not is_off(h["weight_decay"])
        if decay and missing_params(owner, updates, params, "its weight decay reads them"):
            return updates, state
        out, *new = elementwise(_novograd_rule, h, updates, (state.step, state.mu, state.nu),
                                (params,) if decay else (), name=owner, complex_as_real=True,
                                input_names=("params",), donate_state=True,
                                state_like=(None, LIKE, None))
        return out, ScaleByNovogradState(*new)

    return Transform(init, update, defaults)


# --------------------------------------------------------------------------------------------
# SM3


class ScaleBySm3State(NamedTuple):
    """State of :func:`scale_by_sm3`.

    Attributes:
        accumulators: the cover's accumulators: for a parameter of 2 or more dimensions, one
            vector per dimension (of its length), concatenated in dimension order into one
            vector of ``sum(p.shape)`` entries; for a vector or a scalar, one accumulator per
            entry (its shape).
        mu: the momentum (the update), shaped like the parameters.
    """

    accumulators: Any
    mu: Any


def _sm3_leaf(h, g, acc, m):
    b1, b2 = h["betas"]
    if isinstance(b2, Number):  # optax's weight of the new squares: 1 for b2 = 1
        weight = 1 - b2 if b2 != 1 else 1.0
    else:
        weight = torch.where(b2 == 1, 1.0, 1 - b2)
    if g.ndim < 2:
        low = acc
    else:  # the cover's minimum, broadcast over the grid
        covers = [x.reshape([n if j == i else 1 for j, n in enumerate(g.shape)])
                  for i, x in enumerate(torch.split(acc, list(g.shape)))]
        low = functools.reduce(torch.minimum, covers)
    # (in the leaf's dtype, here and below: a 0-d leaf would take the 0-d hyperparameters'
    # float64)
    accum = (weight * (g * g) + b2 * low).to(g.dtype)
    if g.ndim < 2:
        new = accum
    elif not accum.numel():  # (an empty parameter: the maxima over no elements stay 0)
        new = accum.new_zeros(sum(g.shape))
    else:
        dims = range(g.ndim)
        new = torch.cat([torch.amax(accum, dim=[j for j in dims if j != i]) for i in dims])
    positive = accum > 0
    root = torch.rsqrt(torch.where(positive, accum, 1.0) + h["eps"])
    scaled = (g * torch.where(positive, root, 0.0)).to(g.dtype)
    m = lerp(m, scaled, 1 - b1)
    return m, new, m


def scale_by_sm3(betas: tuple[float, float] = (0.9, 1.0), eps: float = 1e-8) -> Transform:
    r"""SM3's memory-efficient adaptive scaling (Anil et al., 2019, *Memory-Efficient Adaptive
    Optimization*), as optax's ``scale_by_sm3``.

    For a parameter of shape :math:`(n_1, \dots, n_k)`, :math:`k \ge 2`, the cover keeps one
    accumulator vector :math:`a^{(i)}` of length :math:`n_i` per dimension (memory
    :math:`\sum_i n_i` instead of :math:`\prod_i n_i`):

    .. math::
        \nu_t = w\, g_t^2 + \beta_2 \min_i a^{(i)}_{t-1}, \qquad
        a^{(i)}_t = \max_{\text{dims} \ne i} \nu_t, \qquad
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\,\frac{g_t}{\sqrt{\nu_t + \epsilon}}
        \ (0 \text{ where } \nu_t = 0), \qquad u_t = m_t

    (the minimum broadcast over the grid), with :math:`w = 1 - \beta_2`, or 1 where
    :math:`\beta_2 = 1` (the default: a running sum, as Adagrad). A vector or a scalar keeps
    :math:`\nu_t` itself (optax's rule for vectors; optax's fails on scalars). Real parameters
    only.

    Args:
        betas: ``(β1, β2)``: the momentum's decay and the accumulators' (default
            ``(0.9, 1.0)``; ``β2`` in [0, 1]).
        eps: ``ε`` added inside the root (default 1e-8).
    """
    owner = "scale_by_sm3"
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise HParamError(f"{owner}: betas must be a pair, got {betas!r}")
    check_betas(owner, (betas[0], 0.0))
    check_hparam(owner, "betas[1]", betas[1], ge=0, le=1)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps}
    rule = leafwise(_sm3_leaf)

    def init(params):
        def cover(p):
            if p.ndim < 2:
                return torch.zeros_like(p)
            return torch.zeros(sum(p.shape), dtype=p.dtype, device=p.device)

        return ScaleBySm3State(_tree.map(cover, params), _tree.zeros_like(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleBySm3State)
        out, acc, mu = elementwise(rule, h, updates, (state.accumulators, state.mu),
                                   name=owner, real_only=True, state_like=(None, LIKE))
        return out, ScaleBySm3State(acc, mu)

    return Transform(init, update, defaults)

r"""Adam's moments rearranged: LaProp (Ziyin et al., 2020), which normalizes before the
momentum, and Adam-mini (Zhang et al., 2024), which keeps one second moment per block."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    Pointwise,
    PointwiseCall,
    cast_hparams,
    ema_square,
    init_count,
    lerp,
    safe_sqrt,
    scalar_dtype,
)
from ..base import (
    Transform,
    check_betas,
    check_hparam,
    check_state,
    pointwise_transform,
    resolve_hparams,
)

__all__ = ["ScaleByLapropState", "scale_by_laprop", "ScaleByAdamMiniState", "scale_by_adam_mini"]


class ScaleByLapropState(NamedTuple):
    """State of :func:`scale_by_laprop`: per-parameter step count (0-d int64), the momentum of
    the normalized gradients ``exp_avg`` and the second moment ``exp_avg_sq``."""

    step: Any
    mu: Any
    nu: Any


def _laprop_rule(h, g, t, m, v):
    b1, b2 = h["betas"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    v = ema_square(v, g, b2)
    normalized = g / (safe_sqrt(v / (1 - b2**tf), nonnegative=True) + h["eps"])
    m = lerp(m, normalized.to(m.dtype), 1 - b1)  # (a 0-d leaf: its coefficients promote it)
    return (m / (1 - b1**tf), t, m, v)


def scale_by_laprop(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-15) -> Transform:
    r"""LaProp's direction (Ziyin, Wang & Ueda, 2020, *LaProp: Separating Momentum and
    Adaptivity in Adam*): the momentum of the RMS-normalized gradients.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) \frac{g_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},
        \qquad u_t = \frac{m_t}{1-\beta_1^t}

    The authors' code folds the learning rate into :math:`m_t` (their bias correction divides
    by the running mean of the rates); with a constant rate that is this block followed by
    ``scale_by_learning_rate`` (:func:`~functional_optim.laprop`). Complex parameters as pairs of
    reals.

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-15, the authors').
    """
    owner = "scale_by_laprop"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps}

    def init(params):
        return ScaleByLapropState(init_count(params), _tree.zeros_like(params),
                                  _tree.zeros_like(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByLapropState)
        return PointwiseCall(_laprop_rule, h, (state.step, state.mu, state.nu),
                             finish=lambda new: ScaleByLapropState(*new),
                             donate_state=(True, True, True), state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


class ScaleByAdamMiniState(NamedTuple):
    """State of :func:`scale_by_adam_mini`.

    Attributes:
        step: per-parameter step count (0-d int64).
        mu: first moment, shaped like the parameter.
        nu: the second moment of each block: shape ``(rows, 1, ..., 1)`` for a leaf of 2 or
            more dimensions (one per output row), 0-d for the others.
    """

    step: Any
    mu: Any
    nu: Any


def _block_shape(p: torch.Tensor) -> tuple:
    return (p.shape[0],) + (1,) * (p.ndim - 1) if p.ndim >= 2 else ()


def _mean_square(g: torch.Tensor) -> torch.Tensor:
    sq = g * g
    return torch.mean(sq, dim=tuple(range(1, g.ndim)), keepdim=True) if g.ndim >= 2 else (
        torch.mean(sq))


def scale_by_adam_mini(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Transform:
    r"""Adam-mini's direction (Zhang et al., 2024, *Adam-mini: Use Fewer Learning Rates To Gain
    More*): Adam with one second moment per block, the mean of the squared gradient over it.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_{t,b} = \beta_2 v_{t-1,b} + (1-\beta_2)\,\operatorname{mean}_{i \in b} g_{t,i}^2,
        \qquad u_{t,i} = \frac{m_{t,i}/(1-\beta_1^t)}{\sqrt{v_{t,b(i)}/(1-\beta_2^t)} + \epsilon}

    The blocks are the authors' default partition for the layers it does not special-case:
    each output row (``p[i]``) of a leaf of 2 or more dimensions, the whole leaf otherwise.
    Their special cases (embeddings and output layers keep Adam's per-coordinate moment,
    queries and keys one block per head) are a :func:`~functional_optim.partition` away: Adam
    on the embeddings, this block on the rest. The state holds one number per block. Real only.

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
    """
    owner = "scale_by_adam_mini"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps}

    def init(params):
        return ScaleByAdamMiniState(
            init_count(params), _tree.zeros_like(params),
            _tree.map(lambda p: p.new_zeros(_block_shape(p)), params))

    def one(h, g, t, m, v):
        if g.is_complex():
            raise TypeError(f"{owner} does not support complex updates (dtype {g.dtype})")
        hh = cast_hparams(h, g)
        b1, b2 = hh["betas"]
        t = t + 1
        tf = t.to(scalar_dtype(g))
        m = lerp(m, g, 1 - b1)
        v = (v * b2 + (1 - b2) * _mean_square(g)).to(v.dtype)  # (0-d: not promoted by b2)
        denom = safe_sqrt(v / (1 - b2**tf), nonnegative=True) + hh["eps"]
        return ((m / (1 - b1**tf)) / denom).to(g.dtype), t, m, v

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByAdamMiniState)
        spec = _tree.structure(updates)
        columns = [_tree.flatten_like(tree, spec, f"state.{name}", "updates")
                   for name, tree in zip(state._fields, state)]
        rows = [(g, t, m, v) if g is None else one(h, g, t, m, v)
                for g, t, m, v in zip(_tree.flatten_like(updates, spec, "updates", "updates"),
                                      *columns)]
        if not rows:
            return updates, state
        out, step, mu, nu = (spec.unflatten(list(col)) for col in zip(*rows))
        return out, ScaleByAdamMiniState(step, mu, nu)

    return Transform(init, update, defaults)

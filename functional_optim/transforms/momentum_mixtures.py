r"""Mixtures of momenta: AdEMAMix (Pagliardini, Ablin & Grangier, 2024) and its simplified form
(Morwani et al., 2025).

Pointwise rules (run per leaf, over tensor lists, or fused in a chain) with a per-parameter
``step`` count (0-d int64); complex parameters are treated as pairs of reals.

*Schedules.* AdEMAMix's paper warms ``alpha`` and ``β3`` up; every hyperparameter of these
blocks is a value, so a schedule of one is :func:`functional_optim.inject_hparams`:
``fo.inject_hparams(fo.scale_by_ademamix(), {"alpha": schedule, "betas.2": other})`` evaluates
them at the update's count (0 at the first update), as optax's ``b3``/``alpha`` schedules are.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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

__all__ = ["ScaleByAdemamixState", "scale_by_ademamix", "ScaleBySimplifiedAdemamixState",
           "scale_by_simplified_ademamix"]


def _denominator(h, v, t, b2, g):
    """:math:`\\sqrt{v/(1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon`."""
    v_hat = v / (1 - b2 ** t.to(scalar_dtype(g)))
    if not is_off(h["eps_root"]):
        v_hat = v_hat + h["eps_root"]
    return safe_sqrt(v_hat, nonnegative=True) + h["eps"]


class ScaleByAdemamixState(NamedTuple):
    """State of :func:`scale_by_ademamix`.

    Attributes:
        step: per-parameter step count (0-d int64).
        exp_avg_fast: the fast momentum :math:`m_1`.
        exp_avg_slow: the slow momentum :math:`m_2`.
        exp_avg_sq: the second moment :math:`v`.
    """

    step: Any
    exp_avg_fast: Any
    exp_avg_slow: Any
    exp_avg_sq: Any


def _ademamix_rule(h, g, t, m1, m2, v):
    b1, b2, b3 = h["betas"]
    t = t + 1
    m1 = lerp(m1, g, 1 - b1)
    m2 = lerp(m2, g, 1 - b3)
    v = ema_square(v, g, b2)
    fast = m1 / (1 - b1 ** t.to(scalar_dtype(g)))
    return (fast + h["alpha"] * m2) / _denominator(h, v, t, b2, g), t, m1, m2, v


def scale_by_ademamix(betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                      alpha: float = 6.0, eps: float = 1e-8, eps_root: float = 0.0
                      ) -> Transform:
    r"""AdEMAMix's scaling (Pagliardini, Ablin & Grangier, 2024, *The AdEMAMix Optimizer:
    Better, Faster, Older*), as optax's ``contrib.scale_by_ademamix`` computes it.

    .. math::
        m_1 \leftarrow \beta_1 m_1 + (1-\beta_1) g, \quad
        m_2 \leftarrow \beta_3 m_2 + (1-\beta_3) g, \quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \\
        u_t = \frac{m_1/(1-\beta_1^t) + \alpha\, m_2}
                   {\sqrt{v/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    (the slow momentum is not bias-corrected). ``alpha`` and ``β3`` take schedules through
    :func:`functional_optim.inject_hparams` (see the module docstring).

    Args:
        betas: ``(β1, β2, β3)`` (default ``(0.9, 0.999, 0.9999)``).
        alpha: ``α``, the weight of the slow momentum (default 6, optax's block default; the
            alias's is 5).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
    """
    owner = "scale_by_ademamix"
    if not isinstance(betas, (tuple, list)) or len(betas) != 3:
        raise HParamError(f"{owner}: betas must be a triple (β1, β2, β3), got {betas!r}")
    for i, b in enumerate(betas):
        check_hparam(owner, f"betas[{i}]", b, ge=0, lt=1)
    check_hparam(owner, "alpha", alpha)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "eps_root", eps_root, ge=0)
    defaults = {"betas": tuple(betas), "alpha": alpha, "eps": eps, "eps_root": eps_root}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByAdemamixState(init_count(params), zeros(params), zeros(params),
                                    zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByAdemamixState)
        states = (state.step, state.exp_avg_fast, state.exp_avg_slow, state.exp_avg_sq)
        return PointwiseCall(_ademamix_rule, h, states,
                             finish=lambda new: ScaleByAdemamixState(*new),
                             donate_state=(True,) * len(states),
                             state_like=(None, LIKE, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


class ScaleBySimplifiedAdemamixState(NamedTuple):
    """State of :func:`scale_by_simplified_ademamix`.

    Attributes:
        step: per-parameter step count (0-d int64).
        exp_avg: the accumulated momentum :math:`m` (a discounted sum, not a mean).
        exp_avg_sq: the second moment :math:`v`.
    """

    step: Any
    exp_avg: Any
    exp_avg_sq: Any


def _simplified_rule(h, g, t, m, v):
    b1, b2 = h["betas"]
    t = t + 1
    m = m * b1 + g
    v = ema_square(v, g, b2)
    top = m if is_off(h["alpha"]) else m + h["alpha"] * g
    return top / _denominator(h, v, t, b2, g), t, m, v


def scale_by_simplified_ademamix(betas: tuple[float, float] = (0.99, 0.95), alpha: float = 0.0,
                                 eps: float = 1e-8, eps_root: float = 0.0) -> Transform:
    r"""Simplified AdEMAMix's scaling (Morwani et al., 2025, *Connections between Schedule-Free
    Optimizers, AdEMAMix, and Accelerated SGD Variants*), as optax's
    ``contrib.scale_by_simplified_ademamix`` computes it.

    .. math::
        m \leftarrow \beta_1 m + g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        u_t = \frac{m + \alpha g}{\sqrt{v/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Args:
        betas: ``(β1, β2)`` (default ``(0.99, 0.95)``).
        alpha: ``α``, the weight of the current gradient (default 0).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
    """
    owner = "scale_by_simplified_ademamix"
    check_betas(owner, betas)
    check_hparam(owner, "alpha", alpha)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "eps_root", eps_root, ge=0)
    defaults = {"betas": tuple(betas), "alpha": alpha, "eps": eps, "eps_root": eps_root}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleBySimplifiedAdemamixState(init_count(params), zeros(params), zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleBySimplifiedAdemamixState)
        states = (state.step, state.exp_avg, state.exp_avg_sq)
        return PointwiseCall(_simplified_rule, h, states,
                             finish=lambda new: ScaleBySimplifiedAdemamixState(*new),
                             donate_state=(True,) * len(states), state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))

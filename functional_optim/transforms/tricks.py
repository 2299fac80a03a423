r"""Elementwise and wrapper tricks that apply to any chain: cautious masking (Liang et al., 2024),
cautious weight decay (Chen et al., 2025), MARS's variance-reduced gradients (Yuan et al.,
2024), OrthoGrad (Prieto et al., 2025) and update clipping by a trust region.

Each is a block (or, :func:`cautious`, a wrapper of a block) with live hyperparameters, written
once as math on tensors and run per leaf or over tensor lists by
the library's one execution mechanism. Per-leaf reductions (a mask's mean, a norm, a dot
product) are completed across the shards of a DTensor leaf.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from .. import _execute
from .. import tree as _tree
from .._execute import LIKE, elementwise, full
from ..base import (
    EmptyState,
    Transform,
    _check_transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)

__all__ = [
    "cautious",
    "add_cautious_decayed_weights",
    "orthograd",
    "ScaleByMarsState",
    "scale_by_mars",
    "clip_by_trust_ratio",
]

#: the floor of the kept fraction in :func:`cautious`'s rescaling (the reference's ``1e-3``)
CAUTIOUS_MIN_FRACTION = 1e-3
#: the floor of the squared norm and of the norm in :func:`orthograd` (the reference's)
ORTHOGRAD_EPS = 1e-30


def _empty_init(params: Any) -> EmptyState:
    return EmptyState()


def _cautious_rule(h, u, g):
    mask = (_execute.borrowed(u) * g > 0).to(u.dtype)
    kept = torch.clamp(full(torch.mean(mask)), min=CAUTIOUS_MIN_FRACTION)
    return (u * mask / kept,)


def cautious(inner: Transform) -> Transform:
    r"""Cautious masking around any direction block (Liang et al., 2024, *Cautious Optimizers:
    Improving Training with One Line of Code*): zero the update where its sign disagrees with
    the gradient, and rescale the rest by the fraction kept, leaf by leaf.

    .. math::
        u = \mathrm{inner}(g), \qquad \phi = \mathbb{1}[u \odot g > 0], \qquad
        u \mapsto \frac{u \odot \phi}{\max(\operatorname{mean}\phi,\ 10^{-3})}

    ``g`` is the update that enters ``inner``, so wrap the *direction* (descent-signed: before
    the learning rate), e.g. ``chain(cautious(scale_by_adam()), add_decayed_weights(wd),
    scale_by_learning_rate(lr))`` (:func:`~functional_optim.cautious_adamw`), or
    ``cautious(chain(trace(0.9), ...))``. The hparams and state are ``inner``'s. Real only.

    Args:
        inner: the direction block.
    """
    owner = "cautious"
    _check_transform(inner, f"{owner}: inner")

    def update(updates, state, params=None, hparams=None, **extra):
        u, state = inner.update(updates, state, params, hparams, **extra)
        (out,) = elementwise(_cautious_rule, {}, u, inputs=(updates,), name=owner,
                             real_only=True, input_names=("gradient",))
        return out, state

    return Transform(inner.init, _execute.owning(update, [inner]), inner.hparams)


def _cautious_decay_rule(h, u, p):
    decay = h["weight_decay"]
    if _execute.is_off(decay):
        return (u,)
    return (u + decay * p * (_execute.borrowed(u) * p >= 0).to(u.dtype),)


def add_cautious_decayed_weights(weight_decay: float = 0.0) -> Transform:
    r"""Cautious weight decay (Chen et al., 2025, *Cautious Weight Decay*): decoupled decay only
    where the update and the parameter have the same sign (where decaying moves the parameter
    the way the update does).

    .. math:: u \mapsto u + \lambda\, p \odot \mathbb{1}[u \odot p \ge 0]

    Place it after the direction and before the learning rate, as decoupled decay
    (:func:`~functional_optim.cautious_adamw` with ``cautious_weight_decay=True``). Needs
    ``params`` unless ``weight_decay`` is the Python number 0 at update time. Real only.

    Args:
        weight_decay: ``λ`` (>= 0; default 0).
    """
    owner = "add_cautious_decayed_weights"
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    defaults = {"weight_decay": weight_decay}

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        if _execute.is_off(h["weight_decay"]) or missing_params(owner, updates, params):
            return updates, state
        (out,) = elementwise(_cautious_decay_rule, h, updates, inputs=(params,), name=owner,
                             real_only=True, input_names=("params",))
        return out, state

    return Transform(_empty_init, update, defaults)


def _orthograd_rule(h, g, p):
    g_norm = full(torch.linalg.vector_norm(g))
    projection = full(torch.sum(p * _execute.borrowed(g))) / (full(torch.sum(p * p))
                                                              + ORTHOGRAD_EPS)
    orthogonal = g - projection * p
    o_norm = full(torch.linalg.vector_norm(orthogonal))
    return (orthogonal * (g_norm / (o_norm + ORTHOGRAD_EPS)),)


def orthograd() -> Transform:
    r"""OrthoGrad (Prieto et al., 2025, *Grokking at the Edge of Numerical Stability*): removes
    the component of each leaf's gradient along its parameter (the radial direction, which
    only grows the weights' norm) and restores the gradient's norm.

    .. math::
        g_\perp = g - \frac{\langle p, g\rangle}{\langle p, p\rangle + \epsilon}\, p, \qquad
        g \mapsto g_\perp \frac{\lVert g\rVert}{\lVert g_\perp\rVert + \epsilon}

    with :math:`\epsilon = 10^{-30}` (the reference's). A one-element leaf keeps its gradient
    (the formula's exact value there; in floating point the reference returns rounding noise
    rescaled to :math:`\lVert g\rVert`). Put it first in a chain:
    ``chain(orthograd(), ...)`` (:func:`~functional_optim.orthograd_adamw`). Stateless; needs
    ``params``; real only.
    """
    owner = "orthograd"

    def update(updates, state, params=None, hparams=None, **extra):
        if missing_params(owner, updates, params):
            return updates, state
        # (a one-element leaf has no orthogonal direction: its own gradient, as the exact
        # formula gives, where rounding would give noise scaled up to the gradient's norm)
        several = _tree.map(lambda g: g if g.numel() > 1 else None, updates)
        (out,) = elementwise(_orthograd_rule, {}, several, inputs=(params,), name=owner,
                             real_only=True, input_names=("params",))
        return _tree.map(lambda g, o: g if o is None else o, updates, out), state

    return Transform(_empty_init, update, {})


class ScaleByMarsState(NamedTuple):
    """State of :func:`scale_by_mars`.

    Attributes:
        last_grad: the previous gradient (zeros at first; MARS's ``last_grad``).
    """

    last_grad: Any


def _mars_rule(h, g, last, *, clip):
    beta = h["beta"]
    g = _execute.borrowed(g)  # (read three times)
    c = (g - last) * (h["gamma"] * (beta / (1 - beta))) + g
    if clip:
        norm = full(torch.linalg.vector_norm(c))
        c = torch.where(norm > 1, c / torch.clamp(norm, min=1.0), c)
    return c, torch.clone(g)


def scale_by_mars(gamma: float = 0.025, beta: float = 0.95, *, clip: bool = True) -> Transform:
    r"""MARS's variance-reduced gradient (Yuan et al., 2024, *MARS: Unleashing the Power of
    Variance Reduction for Training Large Models*, Algorithm 1, its approximate form, which
    takes the previous step's gradient as :math:`\nabla f(x_{t-1}, \xi_t)`):

    .. math::
        c_t = g_t + \gamma \frac{\beta}{1-\beta}(g_t - g_{t-1}), \qquad
        u_t = \frac{c_t}{\lVert c_t\rVert_2} \text{ if } \lVert c_t\rVert_2 > 1
              \text{ else } c_t

    (:math:`g_0 = 0`; the clipping per leaf, with ``clip``). Put it before any chain: MARS-AdamW
    is ``chain(scale_by_mars(γ, β1), scale_by_adam((β1, β2)), ...)``
    (:func:`~functional_optim.mars_adamw`, which ties ``β`` to Adam's ``β1``). Real only.

    Args:
        gamma: ``γ``, the correction's strength (default 0.025).
        beta: ``β`` in [0, 1) (default 0.95), the momentum the correction is scaled for.
        clip: clip :math:`c_t` to norm 1 (structural; default True, the paper's).
    """
    owner = "scale_by_mars"
    check_hparam(owner, "gamma", gamma, ge=0)
    check_hparam(owner, "beta", beta, ge=0, lt=1)
    defaults = {"gamma": gamma, "beta": beta}
    rule = functools.partial(_mars_rule, clip=clip)

    def init(params):
        return ScaleByMarsState(_tree.zeros_like(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByMarsState)
        out, last = elementwise(rule, h, updates, (state.last_grad,), name=owner,
                                real_only=True, state_like=(LIKE,))
        return out, ScaleByMarsState(last)

    return Transform(init, update, defaults)


def _trust_rule(h, u, p):
    u_norm = full(torch.linalg.vector_norm(u))
    bound = h["max_ratio"] * full(torch.linalg.vector_norm(p))
    clipped = torch.logical_and(u_norm > bound, bound > 0)  # (a zero parameter: free)
    return (u * torch.where(clipped, bound / torch.where(u_norm > 0, u_norm, 1.0), 1.0),)


def clip_by_trust_ratio(max_ratio: float = 1e-2) -> Transform:
    r"""Update clipping by a trust region relative to the parameters, leaf by leaf: the step
    :math:`u` (put this block *after* the learning rate) may move each parameter by at most a
    fraction ``τ`` of its norm.

    .. math:: u \mapsto u \cdot \min\left(1, \frac{\tau \lVert p\rVert_2}{\lVert u\rVert_2}
              \right)

    (LARS/LAMB's trust ratio as a bound, not a rescaling; a zero update stays zero; a leaf whose
    parameters are all zero, a bias at initialization, is not bounded, as LAMB takes a ratio of
    1 there, else it could never move). The RMS
    clipping of updates (Adafactor's :math:`u / \max(1, \mathrm{RMS}(u)/d)`) is
    :func:`~functional_optim.transforms.clip_by_block_rms`. Stateless; needs ``params``.

    Args:
        max_ratio: ``τ`` (>= 0; default 1e-2).
    """
    owner = "clip_by_trust_ratio"
    check_hparam(owner, "max_ratio", max_ratio, ge=0)
    defaults = {"max_ratio": max_ratio}

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        if missing_params(owner, updates, params):
            return updates, state
        (out,) = elementwise(_trust_rule, h, updates, inputs=(params,), name=owner,
                             input_names=("params",))
        return out, state

    return Transform(_empty_init, update, defaults)

"""Layer-wise scaling by the parameters' norms: the trust ratio of LARS, LAMB and Fromage, and
optax's ``scale_by_param_block_norm``/``_rms``. Each leaf (a weight matrix, a bias vector) is a
block; its norms are taken over the whole leaf (across the shards of a DTensor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as _tree
from .._execute import elementwise, full
from ..base import EmptyState, Transform, check_hparam, missing_params, resolve_hparams

__all__ = [
    "scale_by_trust_ratio",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
]


def _empty_init(params: Any) -> EmptyState:
    return EmptyState()


def _norm(x):
    return full(torch.linalg.vector_norm(x))


def _rms(x, root_numel):
    return full(torch.linalg.vector_norm(x)) / root_numel


def _floored(x, floor, statistic: Callable, *args: Any):
    """``max(statistic(x, *args), floor)`` whose gradient is 0, not NaN, where the statistic is
    at most ``floor`` (there it is taken of ones: optax's ``safe_norm``)."""
    value = statistic(x, *args)
    small = torch.le(value, floor)
    if torch.is_grad_enabled():
        value = statistic(torch.where(small, 1.0, x), *args)
    return torch.where(small, floor, value)


def safe_norm(x, floor):
    r""":math:`\max(\|x\|_2, m)` over the whole tensor, with a zero (not NaN) gradient where
    the norm is at most ``m = floor`` (0 included)."""
    return _floored(x, floor, _norm)


def safe_rms(x, floor, root_numel):
    r""":math:`\max(\sqrt{\operatorname{mean}|x|^2}, m)` over the whole tensor (of
    ``root_numel ** 2`` entries), with a zero (not NaN) gradient where the RMS is at most
    ``m = floor``."""
    return _floored(x, floor, _rms, root_numel)


def _trust_ratio_rule(h, g, p):
    floor = h["min_norm"]
    p_norm = safe_norm(p, floor)
    u_norm = safe_norm(g, floor)
    zero = torch.logical_or(p_norm == 0, u_norm == 0)
    ratio = h["trust_coefficient"] * p_norm / torch.where(zero, 1.0, u_norm + h["eps"])
    return (g * torch.where(zero, 1.0, ratio),)


def _stateless(owner: str, rule: Callable, defaults: dict, why: str,
               sizes: bool = False) -> Transform:
    """A stateless block whose ``rule(h, g, p)`` reads the parameters (``rule(h, g, p,
    root_numel)`` with ``sizes``: the square root of each leaf's size, a static input by which
    the multi-tensor path groups leaves)."""

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        if missing_params(owner, updates, params, why):
            return updates, state
        inputs = (params, _tree.map(lambda p: p.numel() ** 0.5, params)) if sizes else (params,)
        (out,) = elementwise(rule, h, updates, inputs=inputs, name=owner,
                             input_names=("params", "size"))
        return out, state

    return Transform(_empty_init, update, defaults)


def scale_by_trust_ratio(min_norm: float = 0.0, trust_coefficient: float = 1.0,
                         eps: float = 0.0) -> Transform:
    r"""Scales each leaf's update by its trust ratio, the ratio of the parameter's norm to the
    update's (You et al., 2017, *Large Batch Training of Convolutional Networks* (LARS);
    You et al., 2020, *Large Batch Optimization for Deep Learning* (LAMB)).

    .. math::
        \|p\|_m = \max(\|p\|_2, m), \quad \|u\|_m = \max(\|u\|_2, m), \qquad
        u \mapsto u \cdot \begin{cases} 1 & \|p\|_m = 0 \text{ or } \|u\|_m = 0 \\
        \dfrac{c\, \|p\|_m}{\|u\|_m + \epsilon} & \text{otherwise}\end{cases}

    per leaf, as optax's ``scale_by_trust_ratio`` (the norms over the whole leaf; a leaf whose
    parameter or update is zero keeps its update). Needs ``params``. Complex leaves take the
    norm of their modulus.

    Args:
        min_norm: ``m``, the floor of both norms (default 0: none).
        trust_coefficient: ``c`` (default 1; LARS uses 1e-3).
        eps: ``ε`` added to the update's norm (default 0).
    """
    owner = "scale_by_trust_ratio"
    check_hparam(owner, "min_norm", min_norm, ge=0)
    check_hparam(owner, "trust_coefficient", trust_coefficient)
    check_hparam(owner, "eps", eps, ge=0)
    return _stateless(owner, _trust_ratio_rule, {"min_norm": min_norm,
                                                 "trust_coefficient": trust_coefficient,
                                                 "eps": eps},
                      "the trust ratio is relative to their norm")


def _block_norm_rule(h, g, p):
    return (g * safe_norm(p, h["min_scale"]),)


def _block_rms_rule(h, g, p, root_numel):
    return (g * safe_rms(p, h["min_scale"], root_numel),)


def scale_by_param_block_norm(min_scale: float = 1e-3) -> Transform:
    r"""Scales each leaf's update by its parameter's norm, floored:
    :math:`u \mapsto u \max(\|p\|_2, s)` (optax's ``scale_by_param_block_norm``; a block is a
    leaf, e.g. a weight matrix). Needs ``params``.

    Args:
        min_scale: ``s`` (default 1e-3).
    """
    owner = "scale_by_param_block_norm"
    check_hparam(owner, "min_scale", min_scale, ge=0)
    return _stateless(owner, _block_norm_rule, {"min_scale": min_scale},
                      "the update is scaled by their norm")


def scale_by_param_block_rms(min_scale: float = 1e-3) -> Transform:
    r"""Scales each leaf's update by its parameter's root mean square, floored:
    :math:`u \mapsto u \max(\sqrt{\operatorname{mean}(p^2)}, s)` (optax's
    ``scale_by_param_block_rms``). Needs ``params``.

    Args:
        min_scale: ``s`` (default 1e-3).
    """
    owner = "scale_by_param_block_rms"
    check_hparam(owner, "min_scale", min_scale, ge=0)
    return _stateless(owner, _block_rms_rule, {"min_scale": min_scale},
                      "the update is scaled by their RMS", sizes=True)

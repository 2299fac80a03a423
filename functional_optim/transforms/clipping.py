"""Clipping: by value, by per-leaf norm, by global norm."""

from __future__ import annotations

from typing import Any

import torch

from .. import tree as _tree
from .._execute import Pointwise, PointwiseCall, elementwise
from ..base import EmptyState, Transform, check_hparam, pointwise_transform, resolve_hparams

__all__ = ["clip", "clip_by_norm", "clip_by_global_norm"]

_NORM_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


def _empty_init(params: Any) -> EmptyState:
    return EmptyState()


def _clip_rule(h, g):
    delta = h["max_delta"]
    return (torch.clamp(g, -delta, delta),)


def clip(max_delta: float) -> Transform:
    r"""Clips every update element to :math:`[-\delta, \delta]` (as ``clip_grad_value_``).

    Args:
        max_delta: ``δ`` (>= 0). Real updates only.
    """
    check_hparam("clip", "max_delta", max_delta, ge=0)
    defaults = {"max_delta": max_delta}

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "clip hparams")
        (out,) = elementwise(_clip_rule, h, updates, name="clip", real_only=True)
        return out, state

    return Transform(_empty_init, update, defaults)


def _coefficient(max_norm, norm):
    return torch.clamp(max_norm / (norm + _NORM_EPS), max=1.0)


def _clip_norm_rule(h, g):
    return (g * _coefficient(h["max_norm"], torch.linalg.vector_norm(g)).to(g.dtype),)


def clip_by_norm(max_norm: float) -> Transform:
    r"""Rescales each leaf whose L2 norm exceeds ``max_norm``, leaf by leaf.

    .. math:: u \mapsto u \cdot \min\left(1, \frac{c}{\|u\|_2 + 10^{-6}}\right)

    Args:
        max_norm: ``c`` (>= 0).
    """
    check_hparam("clip_by_norm", "max_norm", max_norm, ge=0)
    defaults = {"max_norm": max_norm}

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "clip_by_norm hparams")
        (out,) = elementwise(_clip_norm_rule, h, updates, name="clip_by_norm")
        return out, state

    return Transform(_empty_init, update, defaults)


def _scale_rule(h, g):
    return (g * h["coef"],)


def clip_by_global_norm(max_norm: float) -> Transform:
    r"""Rescales all updates together when their global L2 norm exceeds ``max_norm``.

    .. math:: u_i \mapsto u_i \cdot \min\left(1, \frac{c}{\sqrt{\sum_j \|u_j\|_2^2} + 10^{-6}}
              \right)

    The formula of ``torch.nn.utils.clip_grad_norm_`` (Pascanu et al., 2013), with no host sync.

    Args:
        max_norm: ``c`` (>= 0).
    """
    check_hparam("clip_by_global_norm", "max_norm", max_norm, ge=0)
    defaults = {"max_norm": max_norm}

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "clip_by_global_norm hparams")
        for i, g in enumerate(_tree.leaves(updates)):
            if g is not None and g.is_sparse:
                raise TypeError(
                    f"clip_by_global_norm does not support sparse updates (leaf "
                    f"{_tree.named_leaves(updates)[i][0]!r})"
                )
        coef = _coefficient(h["max_norm"], _tree.global_norm(updates))
        return PointwiseCall(_scale_rule, {"coef": coef}, finish=lambda new: state)

    return pointwise_transform(_empty_init, defaults,
                               Pointwise(prepare, "clip_by_global_norm", reads_updates=True,
                                         kernel=("clip",)))

"""Clipping: by value, by per-leaf norm, by global norm."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from .. import tree as _tree
from .._execute import Pointwise, PointwiseCall, elementwise
from ..base import (
    EmptyState,
    HParamError,
    Transform,
    check_hparam,
    pointwise_transform,
    resolve_hparams,
)

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


_FORMULAS = ("torch", "tensorflow")


def _check_formula(owner: str, formula: str) -> None:
    if formula not in _FORMULAS:
        raise HParamError(f"{owner}: formula must be one of {_FORMULAS}, got {formula!r}")


def _coefficient(max_norm, norm):
    r"""torch's clipping coefficient :math:`\min(1, c/(\|u\| + 10^{-6}))`."""
    return torch.clamp(max_norm / (norm + _NORM_EPS), max=1.0)


def _clip_norm_rule(h, g, *, formula):
    norm = torch.linalg.vector_norm(g)
    if formula == "torch":
        return (g * _coefficient(h["max_norm"], norm).to(g.dtype),)
    max_norm = h["max_norm"]  # tf.clip_by_norm: (u c) / max(|u|, c)
    if isinstance(max_norm, torch.Tensor):
        max_norm = max_norm.to(g.dtype)
    return ((g * max_norm) / torch.clamp(norm, min=max_norm),)


def clip_by_norm(max_norm: float, *, formula: str = "torch") -> Transform:
    r"""Rescales each leaf whose L2 norm exceeds ``max_norm``, leaf by leaf.

    .. math:: u \mapsto u \cdot \min\left(1, \frac{c}{\|u\|_2 + 10^{-6}}\right)

    That is ``formula="torch"`` (``torch.nn.utils.clip_grad_norm_``'s, per leaf);
    ``"tensorflow"`` is ``tf.clip_by_norm``'s (Keras's ``clipnorm``):
    :math:`u \mapsto (u c) / \max(\|u\|_2, c)`, computed in the leaf's dtype.

    Args:
        max_norm: ``c`` (>= 0).
        formula: ``"torch"`` or ``"tensorflow"`` (static).
    """
    check_hparam("clip_by_norm", "max_norm", max_norm, ge=0)
    _check_formula("clip_by_norm", formula)
    defaults = {"max_norm": max_norm}
    rule = functools.partial(_clip_norm_rule, formula=formula)

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "clip_by_norm hparams")
        (out,) = elementwise(rule, h, updates, name="clip_by_norm")
        return out, state

    return Transform(_empty_init, update, defaults)


def _scale_rule(h, g):
    return (g * h["coef"],)


def clip_by_global_norm(max_norm: float, *, formula: str = "torch") -> Transform:
    r"""Rescales all updates together when their global L2 norm exceeds ``max_norm``.

    .. math:: u_i \mapsto u_i \cdot \min\left(1, \frac{c}{\sqrt{\sum_j \|u_j\|_2^2} + 10^{-6}}
              \right)

    The formula of ``torch.nn.utils.clip_grad_norm_`` (Pascanu et al., 2013), with no host sync
    (``formula="torch"``); ``"tensorflow"`` is ``tf.clip_by_global_norm``'s (Keras's
    ``global_clipnorm``): :math:`u_i \mapsto u_i \cdot c \min(1/\|u\|, 1/c)`.

    Args:
        max_norm: ``c`` (>= 0).
        formula: ``"torch"`` or ``"tensorflow"`` (static).
    """
    check_hparam("clip_by_global_norm", "max_norm", max_norm, ge=0)
    _check_formula("clip_by_global_norm", formula)
    defaults = {"max_norm": max_norm}

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "clip_by_global_norm hparams")
        for i, g in enumerate(_tree.leaves(updates)):
            if g is not None and g.is_sparse:
                raise TypeError(
                    f"clip_by_global_norm does not support sparse updates (leaf "
                    f"{_tree.named_leaves(updates)[i][0]!r})"
                )
        norm, max_norm = _tree.global_norm(updates), h["max_norm"]
        if formula == "torch":
            coef = _coefficient(max_norm, norm)
        else:  # (1/|u| is inf at 0, where the min picks 1/c: a finite gradient there too)
            positive = norm > 0
            inverse = torch.where(positive, 1.0 / torch.where(positive, norm, 1.0), math.inf)
            coef = max_norm * torch.minimum(inverse, 1.0 / (torch.zeros_like(norm) + max_norm))
        return PointwiseCall(_scale_rule, {"coef": coef}, finish=lambda new: state)

    # the fused chain step clips with torch's formula
    kernel = ("clip",) if formula == "torch" else ()
    return pointwise_transform(_empty_init, defaults,
                               Pointwise(prepare, "clip_by_global_norm", reads_updates=True,
                                         kernel=kernel))

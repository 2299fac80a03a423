"""Gradient surgery: :func:`zero_nans`, :func:`centralize`."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import elementwise, full, placed_like
from ..base import EmptyState, Transform, check_state, resolve_hparams

__all__ = ["ZeroNansState", "zero_nans", "centralize"]


class ZeroNansState(NamedTuple):
    """State of :func:`zero_nans`: per leaf, whether the last update held a NaN (0-d bool)."""

    found_nan: Any


def _zero_nans_rule(h, g, found):
    nan = torch.isnan(g)
    return torch.where(nan, torch.zeros_like(g), g), full(nan.any())


def zero_nans() -> Transform:
    """Replaces NaN entries of the updates by 0 and records, per leaf, whether there was one."""

    def init(params):
        return ZeroNansState(_tree.map(
            lambda p: torch.zeros((), dtype=torch.bool, device=p.device), params))

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams({}, hparams, "zero_nans hparams")
        check_state("zero_nans", state, ZeroNansState)
        out, found = elementwise(_zero_nans_rule, {}, updates, (state.found_nan,),
                                 name="zero_nans")
        return out, ZeroNansState(found)

    return Transform(init, update, {})


def _centralize_rule(h, g):
    if g.ndim <= 1:
        return (g,)
    return (placed_like(g - g.mean(dim=tuple(range(1, g.ndim)), keepdim=True), g),)


def centralize() -> Transform:
    r"""Gradient centralization (Yong et al., 2020): removes the mean of each output unit.

    .. math:: u_{i,\cdot} \mapsto u_{i,\cdot} - \operatorname{mean}(u_{i,\cdot})

    for leaves of 2 or more dimensions (the mean over all dimensions but the first); vectors
    and scalars (biases, norms) pass unchanged.
    """

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams({}, hparams, "centralize hparams")
        (out,) = elementwise(_centralize_rule, {}, updates, name="centralize")
        return out, state

    return Transform(lambda params: EmptyState(), update, {})

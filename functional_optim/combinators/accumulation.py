"""Accumulation, skipping, conditions: :func:`multi_steps`, :func:`apply_if_finite`,
:func:`conditionally`.

Decisions that depend on values (a step boundary, a non-finite update) are taken with
:func:`torch.where`: the inner update runs on every call and is selected, so the step is one
graph, capturable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch

from .. import _execute
from .. import tree as _tree
from ..base import HParamError, Transform, _check_transform, check_state
from ._common import _NONE, _count, _pick

__all__ = [
    "MultiStepsState",
    "accumulate",
    "multi_steps",
    "ApplyIfFiniteState",
    "apply_if_finite",
    "ConditionallyState",
    "conditionally",
]


class MultiStepsState(NamedTuple):
    """State of :func:`multi_steps`.

    Attributes:
        mini_step: micro-steps accumulated so far in this window (0-d int64).
        acc: the running sum of the updates (in ``accumulator_dtype``).
        inner_state: the wrapped transform's state, advanced once per window.
    """

    mini_step: torch.Tensor
    acc: Any
    inner_state: Any


def accumulate(acc: Any, updates: Any) -> Any:
    """The running sum ``acc + updates`` leaf by leaf, in ``acc``'s dtypes (a ``None`` update
    leaves its sum as it is); pure. :func:`multi_steps` accumulates with it."""
    return optree.tree_map(lambda a, g: a if g is None else a + g.to(a.dtype), acc, updates,
                           **_NONE)


def multi_steps(inner: Transform, every_k: int,
                accumulator_dtype: torch.dtype | None = None, *,
                reduction: str = "mean") -> Transform:
    r"""Gradient accumulation: ``inner`` runs once every ``every_k`` calls, on the mean update.

    .. math:: \bar g = \tfrac1k \sum_{j=1}^{k} g_j, \qquad
              u = \mathrm{inner}(\bar g) \text{ at the } k\text{-th call, else } 0

    With equal micro-batches this is one big-batch step. ``reduction="sum"`` gives ``inner``
    the sum :math:`\sum_j g_j` instead (what a loss summed over the micro-batches
    differentiates to; HuggingFace's ``GradientAccumulator``). The inner update is computed on
    every call and selected with :func:`torch.where` (no Python branch: capturable, one graph);
    between boundaries the updates are zeros and the inner state is kept.

    Args:
        inner: the transform to run on the accumulated update.
        every_k: micro-steps per step (static int >= 1).
        accumulator_dtype: dtype of the running sum (default: each parameter's dtype; e.g.
            ``torch.float32`` to accumulate bfloat16 gradients).
        reduction: ``"mean"`` or ``"sum"`` of the micro-steps' updates (structural).
    """
    _check_transform(inner, "multi_steps")
    if not isinstance(every_k, int) or isinstance(every_k, bool) or every_k < 1:
        raise HParamError(f"multi_steps: every_k must be an int >= 1, got {every_k!r}")
    if reduction not in ("mean", "sum"):
        raise HParamError(f"multi_steps: reduction must be 'mean' or 'sum', got {reduction!r}")
    divisor = every_k if reduction == "mean" else 1

    def init(params):
        acc = _tree.map(lambda p: torch.zeros_like(p, dtype=accumulator_dtype
                                                   if p.is_floating_point() else None), params)
        return MultiStepsState(_count(params), acc, inner.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        check_state("multi_steps", state, MultiStepsState)
        acc = accumulate(state.acc, updates)
        boundary = state.mini_step == every_k - 1
        total = optree.tree_map(lambda a, g: None if g is None else (
            a if divisor == 1 else a / divisor).to(g.dtype), acc, updates, **_NONE)
        with _execute.keep_state():  # the old inner state may be kept
            out, new_inner = inner.update(total, state.inner_state, params, hparams, **extra)
        out = optree.tree_map(lambda o: None if o is None else torch.where(
            boundary, o, torch.zeros_like(o)), out, **_NONE)
        acc = optree.tree_map(lambda a: None if a is None else torch.where(
            boundary, torch.zeros_like(a), a), acc, **_NONE)
        mini = torch.where(boundary, torch.zeros_like(state.mini_step), state.mini_step + 1)
        return out, MultiStepsState(mini, acc, _pick(boundary, new_inner, state.inner_state))

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`.

    Attributes:
        notfinite_count: consecutive steps with a non-finite update (0-d int64).
        last_finite: whether the last update was finite (0-d bool).
        total_notfinite: all steps with a non-finite update (0-d int64).
        inner_state: the wrapped transform's state (kept on skipped steps).
    """

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: Any


def _all_finite(updates: Any, like: torch.Tensor) -> torch.Tensor:
    """Whether every element of every leaf is finite (a 0-d bool on ``like``'s device): the
    count of non-finite elements is 0 (a sum, so that DTensor leaves reduce it across their
    shards, one all-reduce per mesh)."""
    xs = [g for g in _tree.leaves(updates) if g is not None]
    if not xs:
        return torch.ones((), dtype=torch.bool, device=like.device)
    count = _tree.reduce_by_mesh(xs, lambda g: torch.isfinite(g).logical_not().sum(), torch.sum)
    return (count == 0).to(like.device)


def apply_if_finite(inner: Transform, max_consecutive_errors: int) -> Transform:
    """Skips a step whose updates hold a NaN or an Inf: zero updates, the inner state kept.

    Skips are counted (consecutive and in total); after more than ``max_consecutive_errors``
    consecutive skips the (non-finite) update is applied anyway, as optax's ``apply_if_finite``
    does, so that a diverged run shows up instead of stalling silently.

    Args:
        inner: the wrapped transform.
        max_consecutive_errors: consecutive skips tolerated (static int >= 0).
    """
    _check_transform(inner, "apply_if_finite")
    if not isinstance(max_consecutive_errors, int) or max_consecutive_errors < 0:
        raise HParamError("apply_if_finite: max_consecutive_errors must be an int >= 0, got "
                          f"{max_consecutive_errors!r}")

    def init(params):
        zero = _count(params)
        return ApplyIfFiniteState(zero, torch.ones((), dtype=torch.bool, device=zero.device),
                                  zero, inner.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        check_state("apply_if_finite", state, ApplyIfFiniteState)
        finite = _all_finite(updates, state.notfinite_count)
        notfinite = torch.where(finite, torch.zeros_like(state.notfinite_count),
                                state.notfinite_count + 1)
        apply = finite | (notfinite > max_consecutive_errors)
        with _execute.keep_state():  # the old inner state may be kept
            out, new_inner = inner.update(updates, state.inner_state, params, hparams, **extra)
        out = optree.tree_map(lambda o: None if o is None else torch.where(
            apply, o, torch.zeros_like(o)), out, **_NONE)
        total = torch.where(finite, state.total_notfinite, state.total_notfinite + 1)
        return out, ApplyIfFiniteState(notfinite, finite, total,
                                       _pick(apply, new_inner, state.inner_state))

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


class ConditionallyState(NamedTuple):
    """State of :func:`conditionally`: the step count (0-d int64) and the inner state."""

    count: torch.Tensor
    inner_state: Any


def conditionally(inner: Transform, every_k: int | None = None,
                  predicate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Transform:
    """Applies ``inner`` only at some steps; at the others the updates are zeros and the inner
    state is kept.

    Args:
        inner: the wrapped transform.
        every_k: apply at steps ``0, k, 2k, ...`` (static int >= 1), or
        predicate: ``count (0-d int64 tensor) -> 0-d bool tensor`` (no host sync inside).
    """
    _check_transform(inner, "conditionally")
    if (every_k is None) == (predicate is None):
        raise ValueError("conditionally: give exactly one of every_k and predicate")
    if every_k is not None and (not isinstance(every_k, int) or every_k < 1):
        raise HParamError(f"conditionally: every_k must be an int >= 1, got {every_k!r}")

    def init(params):
        return ConditionallyState(_count(params), inner.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        check_state("conditionally", state, ConditionallyState)
        if predicate is None:
            apply = torch.remainder(state.count, every_k) == 0
        else:
            apply = torch.as_tensor(predicate(state.count), device=state.count.device).bool()
        with _execute.keep_state():  # the old inner state may be kept
            out, new_inner = inner.update(updates, state.inner_state, params, hparams, **extra)
        out = optree.tree_map(lambda o: None if o is None else torch.where(
            apply, o, torch.zeros_like(o)), out, **_NONE)
        return out, ConditionallyState(state.count + 1,
                                       _pick(apply, new_inner, state.inner_state))

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)

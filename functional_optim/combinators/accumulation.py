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
from ..tree_math import norm as _tree_norm
from ._common import _NONE, _count, _pick

__all__ = [
    "MultiStepsState",
    "accumulate",
    "multi_steps",
    "has_updated",
    "skip_not_finite",
    "skip_large_updates",
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
        gradient_step: windows completed so far: the inner transform's steps (0-d int64).
        skip_state: what ``should_skip`` returned last (``()`` without one).
    """

    mini_step: torch.Tensor
    acc: Any
    inner_state: Any
    gradient_step: torch.Tensor
    skip_state: Any


def accumulate(acc: Any, updates: Any) -> Any:
    """The running sum ``acc + updates`` leaf by leaf, in ``acc``'s dtypes (a ``None`` update
    leaves its sum as it is); pure. :func:`multi_steps` accumulates with it.

    An update must have its sum's shape and device (else :class:`TreeMismatchError` names the
    leaf); its dtype is cast to the sum's (the ``accumulator_dtype`` policy).
    """
    def add(a, g):
        if g is None:
            return a
        if g.shape != a.shape:  # (a broadcast would be silent; the leaf is named below)
            raise _tree.TreeMismatchError("accumulate: an update of another shape than its sum")
        return a + g.to(a.dtype)

    try:
        return optree.tree_map(add, acc, updates, **_NONE)
    except (ValueError, RuntimeError):  # the tree, or the leaf (a device: torch's error)
        _tree.check_leaves("accumulate", updates, acc, "accumulator", "sum", dtype=False)
        raise


def _zeros_unless(cond: torch.Tensor, tree: Any) -> Any:
    """``tree`` where ``cond`` holds, zeros of its shapes elsewhere (``None`` stays)."""
    return optree.tree_map(lambda o: None if o is None else torch.where(
        cond, o, torch.zeros_like(o)), tree, **_NONE)


def _never_skip(updates, gradient_step, params):
    return torch.zeros((), dtype=torch.bool, device=gradient_step.device), ()


def _check_skip(skip: Any) -> torch.Tensor:
    if not isinstance(skip, torch.Tensor) or skip.dtype != torch.bool or skip.ndim != 0:
        got = (f"a tensor of dtype {skip.dtype} and shape {tuple(skip.shape)}"
               if isinstance(skip, torch.Tensor) else type(skip).__name__)
        raise TypeError(f"multi_steps: should_skip must return (a 0-d bool tensor, a tree); "
                        f"its first value is {got}")
    return skip


def multi_steps(inner: Transform, every_k: int | Callable[[torch.Tensor], Any],
                accumulator_dtype: torch.dtype | None = None, *,
                reduction: str = "mean",
                should_skip: Callable[..., tuple[torch.Tensor, Any]] | None = None
                ) -> Transform:
    r"""Gradient accumulation: ``inner`` runs once every ``every_k`` calls, on the mean update.

    .. math:: \bar g = \tfrac1k \sum_{j=1}^{k} g_j, \qquad
              u = \mathrm{inner}(\bar g) \text{ at the } k\text{-th call, else } 0

    With equal micro-batches this is one big-batch step. ``reduction="sum"`` gives ``inner``
    the sum :math:`\sum_j g_j` instead (what a loss summed over the micro-batches
    differentiates to; HuggingFace's ``GradientAccumulator``). The inner update is computed on
    every call and selected with :func:`torch.where` (no Python branch: capturable, one graph);
    between boundaries the updates are zeros and the inner state is kept.

    ``should_skip(updates, gradient_step, params) -> (skip, info)`` (a 0-d bool tensor and any
    tree, e.g. :func:`skip_not_finite`, :func:`skip_large_updates`) rejects a micro-step: it
    is then as if it never happened (zero updates, nothing accumulated, no step counted) and
    ``info`` is kept in ``state.skip_state``. As optax's ``MultiSteps``; ``apply_every(k)`` is
    ``multi_steps(identity(), k, reduction="sum")``.

    Args:
        inner: the transform to run on the accumulated update.
        every_k: micro-steps per step: a static int >= 1, or a function of the number of
            completed windows (``gradient_step``, a 0-d int64 tensor) returning the count for
            the current window (an int or 0-d integer tensor; a growing batch size).
        accumulator_dtype: dtype of the running sum (default: each parameter's dtype; e.g.
            ``torch.float32`` to accumulate bfloat16 gradients).
        reduction: ``"mean"`` or ``"sum"`` of the micro-steps' updates (structural).
        should_skip: a test rejecting micro-steps (structural), or ``None``.
    """
    _check_transform(inner, "multi_steps")
    if not callable(every_k) and (not isinstance(every_k, int) or isinstance(every_k, bool)
                                  or every_k < 1):
        raise HParamError(f"multi_steps: every_k must be an int >= 1 or a function of the "
                          f"step, got {every_k!r}")
    if reduction not in ("mean", "sum"):
        raise HParamError(f"multi_steps: reduction must be 'mean' or 'sum', got {reduction!r}")
    skip_fn = should_skip if should_skip is not None else _never_skip

    def init(params):
        acc = _tree.map(lambda p: torch.zeros_like(p, dtype=accumulator_dtype
                                                   if p.is_floating_point() else None), params)
        count = _count(params)
        _, info = skip_fn(_tree.zeros_like(params), count, params)
        return MultiStepsState(count, acc, inner.init(params), count.clone(), info)

    def update(updates, state, params=None, hparams=None, **extra):
        check_state("multi_steps", state, MultiStepsState)
        skip, info = skip_fn(updates, state.gradient_step, params)
        keep = torch.logical_not(_check_skip(skip).to(state.mini_step.device))
        k = every_k(state.gradient_step) if callable(every_k) else every_k
        acc = accumulate(state.acc, updates)
        boundary = (state.mini_step == k - 1) & keep
        if reduction == "sum":
            total = optree.tree_map(lambda a, g: None if g is None else a.to(g.dtype), acc,
                                    updates, **_NONE)
        else:  # (a static k divides by the Python int)
            total = optree.tree_map(lambda a, g: None if g is None else (a / (
                k if isinstance(k, int) else torch.as_tensor(k).to(a.dtype))).to(g.dtype),
                acc, updates, **_NONE)
        with _execute.keep_state():  # the old inner state may be kept
            out, new_inner = inner.update(total, state.inner_state, params, hparams, **extra)
        out = _zeros_unless(boundary, out)
        acc = optree.tree_map(lambda a, old: None if a is None else torch.where(
            boundary, torch.zeros_like(a), torch.where(keep, a, old)), acc, state.acc, **_NONE)
        mini = torch.where(keep, torch.remainder(state.mini_step + 1, k), state.mini_step)
        return out, MultiStepsState(mini, acc, _pick(boundary, new_inner, state.inner_state),
                                    state.gradient_step + boundary.to(torch.int64), info)

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


def has_updated(state: MultiStepsState) -> torch.Tensor:
    """Whether the last :func:`multi_steps` update completed a window (a 0-d bool tensor)."""
    return (state.mini_step == 0) & (state.gradient_step > 0)


def _not_finite_count(updates: Any, like: torch.Tensor) -> torch.Tensor:
    """How many elements of all leaves are NaN or infinite (a 0-d int64 on ``like``'s device;
    a sum, so that DTensor leaves reduce it across their shards, one all-reduce per mesh)."""
    xs = [g for g in _tree.leaves(updates) if g is not None]
    if not xs:
        return torch.zeros((), dtype=torch.int64, device=like.device)
    count = _tree.reduce_by_mesh(xs, lambda g: torch.isfinite(g).logical_not().sum(), torch.sum)
    return count.to(like.device)


def skip_not_finite(updates: Any, gradient_step: torch.Tensor, params: Any
                    ) -> tuple[torch.Tensor, dict]:
    """A ``should_skip`` for :func:`multi_steps`: skip the micro-step when an update holds a NaN
    or an infinity. The info is ``{"should_skip": ..., "num_not_finite": ...}``."""
    count = _not_finite_count(updates, gradient_step)
    return count > 0, {"should_skip": count > 0, "num_not_finite": count}


def skip_large_updates(updates: Any, gradient_step: torch.Tensor, params: Any,
                       max_squared_norm: float | torch.Tensor) -> tuple[torch.Tensor, dict]:
    r"""A ``should_skip`` for :func:`multi_steps` (bind ``max_squared_norm`` with
    :func:`functools.partial`): skip the micro-step unless
    :math:`\lVert u\rVert_2^2 <` ``max_squared_norm`` (a NaN norm skips). The info is
    ``{"should_skip": ..., "norm_squared": ...}``."""
    squared = _tree_norm(updates, squared=True).to(gradient_step.device)
    skip = torch.logical_not(squared < max_squared_norm)
    return skip, {"should_skip": skip, "norm_squared": squared}


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
    """Whether every element of every leaf is finite (a 0-d bool on ``like``'s device)."""
    return _not_finite_count(updates, like) == 0


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
                                  zero.clone(), inner.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        check_state("apply_if_finite", state, ApplyIfFiniteState)
        with _execute.keep_state():  # the old inner state may be kept
            # (first: its errors name a leaf of another shape, dtype or device)
            out, new_inner = inner.update(updates, state.inner_state, params, hparams, **extra)
        finite = _all_finite(updates, state.notfinite_count)
        notfinite = torch.where(finite, torch.zeros_like(state.notfinite_count),
                                state.notfinite_count + 1)
        apply = finite | (notfinite > max_consecutive_errors)
        out = _zeros_unless(apply, out)
        total = torch.where(finite, state.total_notfinite, state.total_notfinite + 1)
        return out, ApplyIfFiniteState(notfinite, finite, total,
                                       _pick(apply, new_inner, state.inner_state))

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


class ConditionallyState(NamedTuple):
    """State of :func:`conditionally`: the step count (0-d int64) and the inner state."""

    count: torch.Tensor
    inner_state: Any


_OTHERWISE = ("zeros", "identity")


def conditionally(inner: Transform, every_k: int | None = None,
                  predicate: Callable[..., torch.Tensor] | None = None, *,
                  otherwise: str = "zeros", forward_extra_args: bool = False) -> Transform:
    """Applies ``inner`` only at some steps; at the others the updates are zeros
    (``otherwise="zeros"``, optax's ``conditionally_mask``) or passed through unchanged
    (``"identity"``, optax's ``conditionally_transform``), and the inner state is kept.

    Args:
        inner: the wrapped transform.
        every_k: apply at steps ``0, k, 2k, ...`` (static int >= 1), or
        predicate: ``count (0-d int64 tensor) -> 0-d bool tensor`` (no host sync inside), called
            as ``predicate(count, **extra)`` with ``update``'s keyword arguments when
            ``forward_extra_args``.
        otherwise: the updates of the other steps, ``"zeros"`` or ``"identity"`` (structural).
        forward_extra_args: pass ``update``'s keyword arguments to ``predicate`` (structural).
    """
    _check_transform(inner, "conditionally")
    if (every_k is None) == (predicate is None):
        raise ValueError("conditionally: give exactly one of every_k and predicate")
    if every_k is not None and (not isinstance(every_k, int) or every_k < 1):
        raise HParamError(f"conditionally: every_k must be an int >= 1, got {every_k!r}")
    if otherwise not in _OTHERWISE:
        raise HParamError(f"conditionally: otherwise must be one of {_OTHERWISE}, got "
                          f"{otherwise!r}")

    def init(params):
        return ConditionallyState(_count(params), inner.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        check_state("conditionally", state, ConditionallyState)
        if predicate is None:
            apply = torch.remainder(state.count, every_k) == 0
        else:
            value = predicate(state.count, **extra) if forward_extra_args \
                else predicate(state.count)
            apply = torch.as_tensor(value, device=state.count.device).bool()
        with _execute.keep_state():  # the old inner state may be kept
            out, new_inner = inner.update(updates, state.inner_state, params, hparams, **extra)
        out = _zeros_unless(apply, out) if otherwise == "zeros" else _pick(apply, out, updates)
        return out, ConditionallyState(state.count + 1,
                                       _pick(apply, new_inner, state.inner_state))

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)

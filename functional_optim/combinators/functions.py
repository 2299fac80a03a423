"""Transforms from functions, and measurements kept in the state: :func:`stateless`,
:func:`stateless_with_tree_map`, :func:`snapshot`, :func:`monitor`, :func:`measure_with_ema`.

A measurement is a function of the updates (a norm, a fraction of clipped leaves, ...) kept in
the state where a chain's other transforms leave the updates: put :func:`snapshot` or
:func:`monitor` between two transforms of a chain and read the measurement back with
:func:`functional_optim.tree_math.get` (``get(state, "grad_norm")``). Both pass the updates
through unchanged. Measurements are computed with tensor ops only: the step stays one graph,
capturable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from .. import _execute
from .. import tree as _tree
from ..base import EmptyState, Transform, _check_transform, chain, check_state, resolve_hparams
from .averaging import ema

__all__ = [
    "stateless",
    "stateless_with_tree_map",
    "SnapshotState",
    "snapshot",
    "MonitorState",
    "monitor",
    "measure_with_ema",
]


def _empty_init(params: Any) -> EmptyState:
    return EmptyState()


def stateless(fn: Callable[[Any, Any], Any]) -> Transform:
    """The transform ``u -> fn(u, params)`` (``params`` may be ``None``), without state or
    hyperparameters. ``fn`` must be pure (tensor ops, no in-place changes of its inputs)."""
    if not callable(fn):
        raise TypeError(f"stateless: expected a function (updates, params) -> updates, got "
                        f"{type(fn).__name__}")

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams({}, hparams, "stateless hparams")
        return fn(updates, params), state

    return Transform(_empty_init, update, {})


def stateless_with_tree_map(fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
                            ) -> Transform:
    """The transform applying ``fn(u, p)`` to each leaf (``p`` is ``None`` without
    ``params``); ``None`` updates stay ``None``."""
    if not callable(fn):
        raise TypeError(f"stateless_with_tree_map: expected a function (update, param) -> "
                        f"update, got {type(fn).__name__}")

    def per_leaf(updates, params):
        if params is None:
            return _tree.map(lambda u: fn(u, None), updates)
        return _tree.map(fn, updates, params)

    return stateless(per_leaf)


class SnapshotState(NamedTuple):
    """State of :func:`snapshot`: ``{name: measurement}``."""

    measurement: dict


def snapshot(name: str, measure: Callable[[Any], Any]) -> Transform:
    """Keeps ``measure(updates)`` in the state under ``name`` and passes the updates through
    (``measure(params)`` at ``init``).

    Example: ``chain(snapshot("grad_norm", fo.tree.global_norm), clip_by_global_norm(1.0),
    ...)``; after an update, ``fo.tree_math.get(state, "grad_norm")`` is the norm before
    clipping.
    """
    if not callable(measure):
        raise TypeError(f"snapshot: measure must be a function of the updates, got "
                        f"{type(measure).__name__}")

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams({}, hparams, "snapshot hparams")
        check_state("snapshot", state, SnapshotState)
        return updates, SnapshotState({name: measure(updates)})

    return Transform(lambda params: SnapshotState({name: measure(params)}), update, {})


class MonitorState(NamedTuple):
    """State of :func:`monitor`.

    Attributes:
        measurements: ``{name: measurement}`` of the last update (before the first update, the
            measurements of zero updates).
        measure_states: ``{name: state}`` of each measuring transform.
    """

    measurements: dict
    measure_states: dict


def monitor(measures: Mapping[str, Transform | Callable[[Any], Any]]) -> Transform:
    """Keeps measurements of the updates in the state and passes the updates through.

    Each measure is a function of the updates or a transform whose *output* is the measurement
    (with a state: e.g. :func:`measure_with_ema`, a moving average of a measurement). The
    hparams are ``{name: measure's hparams}`` (a function has none), so a measure's
    hyperparameters (an EMA's ``decay``) stay live.

    Args:
        measures: ``{name: function or transform}``.
    """
    if not isinstance(measures, Mapping) or not measures:
        raise TypeError("monitor: measures must be a non-empty dict {name: function or "
                        "transform}")
    txs = {}
    for name, measure in measures.items():
        if isinstance(measure, Transform):
            txs[name] = measure
        elif callable(measure):
            txs[name] = stateless(lambda u, p, m=measure: m(u))
        else:
            _check_transform(measure, f"monitor: measure {name!r}")
    defaults = {name: tx.hparams for name, tx in txs.items()}

    def init(params):
        states = {name: tx.init(params) for name, tx in txs.items()}
        zeros = _tree.zeros_like(params)
        with _execute.keep_state():
            measured = {name: tx.update(zeros, states[name], params)[0]
                        for name, tx in txs.items()}
        return MonitorState(measured, states)

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "monitor hparams")
        check_state("monitor", state, MonitorState)
        measured, states = {}, {}
        for name, tx in txs.items():
            measured[name], states[name] = tx.update(updates, state.measure_states[name],
                                                     params, h[name], **extra)
        return updates, MonitorState(measured, states)

    return Transform(init, _execute.owning(update, txs.values()), defaults)


def measure_with_ema(measure: Callable[[Any], Any], decay: float, debias: bool = True,
                     accumulator_dtype: torch.dtype | None = None) -> Transform:
    r"""The moving average of a measurement: a transform whose output is
    :math:`m_t = \beta m_{t-1} + (1 - \beta)\,\mathrm{measure}(u_t)` (divided by
    :math:`1-\beta^t` when ``debias``), for :func:`monitor`.

    Args:
        measure: a function of the updates returning a tensor or a tree of tensors.
        decay: ``β`` in [0, 1] (the hparam ``"decay"`` of the chain's second member).
        debias: divide by :math:`1-\beta^t` (static; default True).
        accumulator_dtype: dtype of the average (default: the measurement's).
    """
    average = ema(decay, debias, accumulator_dtype)
    on_measurement = Transform(lambda params: average.init(measure(params)), average.update,
                               average.hparams)
    return chain(stateless(lambda u, p: measure(u)), on_measurement)

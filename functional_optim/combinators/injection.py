"""Hyperparameter injection: hyperparameters driven by schedules or by the state
(:func:`inject_hparams`, :func:`get_hparam`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import optree
import torch

from .. import _execute
from .._execute import scalar_dtype
from ..base import (
    HParamError,
    Transform,
    _check_transform,
    check_state,
    resolve_hparams,
)
from ..schedules import as_schedule
from ._common import _count

__all__ = ["InjectHparamsState", "inject_hparams", "get_hparam"]


class InjectHparamsState(NamedTuple):
    """State of :func:`inject_hparams`.

    Attributes:
        count: the step count (0-d int64), the schedules' argument.
        hparams: ``{path: value}``: the value each injected hyperparameter had at the last
            update (0-d float64; ``NaN`` before the first one), and of each hyperparameter
            held in the state, the value the next update uses (replace it to change it).
            Read with :func:`get_hparam`.
        inner_state: the wrapped transform's state.
        schedule_states: ``{path: state}`` of each stateful schedule.
    """

    count: torch.Tensor
    hparams: dict
    inner_state: Any
    schedule_states: dict


def _is_stateful(schedule: Any) -> bool:
    """A stateful schedule: ``init() -> state``, ``update(state, **extra) -> state`` and
    ``schedule(state, **extra) -> value`` (optax's ``StatefulSchedule``)."""
    return callable(schedule) and callable(getattr(schedule, "init", None)) \
        and callable(getattr(schedule, "update", None))


def _split_path(path: str) -> list:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def _get_in(tree: Any, keys: list, where: str) -> Any:
    for k in keys:
        try:
            tree = tree[k]
        except (KeyError, IndexError, TypeError):
            known = sorted(map(str, tree)) if isinstance(tree, Mapping) else (
                f"indices 0..{len(tree) - 1}" if isinstance(tree, tuple) else "none")
            raise HParamError(f"inject_hparams: no hyperparameter {where!r} (at {k!r}; "
                              f"known there: {known})") from None
    return tree


def _set_in(tree: Any, keys: list, value: Any) -> Any:
    if not keys:
        return value
    k, rest = keys[0], keys[1:]
    if isinstance(tree, Mapping):
        return {**tree, k: _set_in(tree[k], rest, value)}
    return tuple(_set_in(v, rest, value) if i == k else v for i, v in enumerate(tree))


def inject_hparams(inner: Transform, schedules: Mapping[str, Any] | None = None, *,
                   from_state: Mapping[str, Callable[[Any, torch.Tensor], Any]] | None = None,
                   in_state: Sequence[str] = ()) -> Transform:
    r"""Drives hyperparameters of ``inner`` by schedules, by functions of its state, or by
    values held in the state.

    Hyperparameters are addressed by their dotted path in ``inner.hparams``: ``"lr"`` in an
    alias, ``"adam.betas.0"`` or ``"lr.lr"`` in a named chain ``chain(adam=..., lr=...)``,
    ``"1.momentum"`` in a positional chain. At step :math:`t` (counted in the state, from 0)
    the value is ``schedule(t)`` or ``fn(inner_state, t)``; it is stored in the state, so
    :func:`get_hparam` reads it back. The wrapper's hparams are ``inner``'s, with each
    scheduled entry replaced by the schedule's own hparams dict (so they stay values: tensors,
    batched, differentiable), and each entry computed from the state or held in it replaced by
    ``None`` (it is no hyperparameter: a value given for it is not read).

    A *stateful* schedule (an object with ``init() -> state``, ``update(state, **extra) ->
    state`` and ``schedule(state, **extra) -> value``, optax's ``StatefulSchedule``) keeps its
    state in ``state.schedule_states`` (its tensors moved to the parameters' device) and sees
    ``update``'s keyword arguments (a loss ``value``, say). A path of ``in_state`` is read
    from ``state.hparams[path]`` at every update (its default at ``init``): replace that value
    in the state to change it between steps, as optax's ``inject_hyperparams`` keeps its
    numeric hyperparameters.

    Args:
        inner: the transform whose hyperparameters are injected.
        schedules: ``{path: Schedule, callable step -> value, or stateful schedule}``.
        from_state: ``{path: fn(inner_state, count) -> value}``, for values computed from the
            state (e.g. a learning rate from a running statistic).
        in_state: paths whose values are held in the state.
    """
    _check_transform(inner, "inject_hparams")
    stateful = {k: v for k, v in (schedules or {}).items() if _is_stateful(v)}
    schedules = {k: as_schedule(v, f"inject_hparams[{k!r}]")
                 for k, v in (schedules or {}).items() if k not in stateful}
    from_state = dict(from_state or {})
    in_state = tuple(in_state)
    paths = tuple(schedules) + tuple(stateful) + tuple(from_state) + in_state
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"inject_hparams: {repeated} given more than one way (a schedule, a "
                         "function of the state, a value in the state)")
    for path in paths:
        _get_in(inner.hparams, _split_path(path), path)
    held = {p: _get_in(inner.hparams, _split_path(p), p) for p in in_state}
    defaults = inner.hparams
    for path, sched in schedules.items():
        defaults = _set_in(defaults, _split_path(path), sched.hparams)
    for path in (*stateful, *from_state, *in_state):
        defaults = _set_in(defaults, _split_path(path), None)

    def init(params):
        count = _count(params)
        dtype = scalar_dtype(torch.empty(0, device=count.device))
        nan = torch.full((), float("nan"), dtype=dtype, device=count.device)
        stored = {p: nan for p in paths}
        for path, value in held.items():
            stored[path] = torch.as_tensor(value, dtype=dtype, device=count.device).reshape(())
        on_device = {p: optree.tree_map(lambda x: x.to(count.device)  # (the params' device)
                                        if isinstance(x, torch.Tensor) else x, sched.init())
                     for p, sched in stateful.items()}
        return InjectHparamsState(count, stored, inner.init(params), on_device)

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "inject_hparams hparams")
        check_state("inject_hparams", state, InjectHparamsState)
        values = {}
        for path, sched in schedules.items():
            keys = _split_path(path)
            values[path] = sched(state.count, _get_in(h, keys, path))
        for path, sched in stateful.items():
            values[path] = sched(state.schedule_states[path], **extra)
        for path, fn in from_state.items():
            values[path] = fn(state.inner_state, state.count)
        for path in in_state:
            values[path] = state.hparams[path]
        values = {p: torch.as_tensor(v, dtype=torch.float64, device=state.count.device)
                  if not isinstance(v, torch.Tensor) else v for p, v in values.items()}
        for path in (*stateful, *from_state):
            values[path] = values[path].to(torch.float64)
        for path, v in values.items():
            h = _set_in(h, _split_path(path), v)
        out, inner_state = inner.update(updates, state.inner_state, params, h, **extra)
        stored = {p: values[p].to(_held_dtype(state.hparams[p], values[p])).reshape(())
                  for p in paths}
        new_schedule_states = {p: sched.update(state.schedule_states[p], **extra)
                               for p, sched in stateful.items()}
        return out, InjectHparamsState(state.count + 1, stored, inner_state, new_schedule_states)

    return Transform(init, _execute.owning(update, [inner]), defaults)


def _held_dtype(held: Any, value: torch.Tensor) -> torch.dtype:
    """The dtype a value is stored in: the state's (a number put there by hand, as optax's
    ``state.hyperparams[name] = 0.1``, keeps the value's)."""
    return held.dtype if isinstance(held, torch.Tensor) else value.dtype


def get_hparam(state: Any, name: str) -> torch.Tensor:
    """The current value of an injected hyperparameter, found in ``state`` by its path.

    Searches ``state`` (a chain's, a partition's, nested) for an :class:`InjectHparamsState`
    holding ``name``; ``name`` may be prefixed by the path to that state
    (``"adam.lr"`` for ``chain(adam=inject_hparams(adamw(...), {"lr": s}))``).
    """
    found = []

    def walk(node, prefix):
        if isinstance(node, InjectHparamsState):
            for path, value in node.hparams.items():
                if name in (path, f"{prefix}{path}"):
                    found.append(value)
            walk(node.inner_state, prefix)
        elif isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, tuple):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")

    walk(state, "")
    if not found:
        raise KeyError(f"get_hparam: no injected hyperparameter {name!r} in this state "
                       "(wrap the transform with inject_hparams)")
    return found[0]

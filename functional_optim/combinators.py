"""Combinators and wrappers: transforms built from other transforms.

Each returns a :class:`~functional_optim.Transform`; each is pure, differentiable, ``vmap``-able,
compilable with ``fullgraph=True`` and capturable: decisions that depend on values (a step
boundary, a non-finite gradient, a sync step) are taken with :func:`torch.where`, never in
Python. A wrapper whose only hyperparameters are its inner transform's exposes them unchanged
(``masked(adamw(...), m).hparams`` is ``adamw``'s dict), so a ``param_group`` still is its hparams.

Selecting a subset of the parameters (:func:`masked`, :func:`partition`) hands the inner transform
the parameter tree with ``None`` in place of the other leaves: ``None`` leaves cost nothing and
carry no state, so the inner state exists only for the leaves it owns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import optree
import torch

from . import _execute
from . import tree as _tree
from ._execute import (
    LIKE,
    SHAPED,
    elementwise,
    first_device,
    full,
    init_count,
    placed_like,
    scalar_dtype,
)
from .base import (
    EmptyState,
    HParamError,
    Transform,
    _check_transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from .schedules import as_schedule

__all__ = [
    "MaskedNode",
    "masked",
    "partition",
    "label_params",
    "freeze",
    "InjectHparamsState",
    "inject_hparams",
    "get_hparam",
    "MultiStepsState",
    "accumulate",
    "multi_steps",
    "ApplyIfFiniteState",
    "apply_if_finite",
    "ZeroNansState",
    "zero_nans",
    "centralize",
    "LookaheadState",
    "lookahead",
    "EmaState",
    "ema",
    "AverageParamsState",
    "average_params",
    "ConditionallyState",
    "conditionally",
    "flatten",
]

_NONE = {"none_is_leaf": True}


class MaskedNode(NamedTuple):
    """Stands for a leaf an inner transform does not own (:func:`masked`, :func:`partition`).

    An empty node: it has no leaves, so the inner transform neither computes nor keeps state for
    it (its state holds a ``MaskedNode`` there too, which ``vmap`` accepts, unlike ``None``).
    """


def _select(tree: Any, keep: Any) -> Any:
    """``tree`` with a :class:`MaskedNode` where ``keep`` (a tree of bools) is False."""
    return optree.tree_map(lambda k, x: x if k or x is None else MaskedNode(), keep, tree,
                           **_NONE)


def _merge(keep: Any, inner: Any, outer: Any) -> Any:
    """``inner``'s leaf where ``keep`` is True, ``outer``'s elsewhere."""
    return optree.tree_map(lambda k, a, b: a if k else b, keep, inner, outer, **_NONE)


def _pick(cond: torch.Tensor, new: Any, old: Any) -> Any:
    """``torch.where(cond, new, old)`` over two trees of the same structure (states, updates)."""

    def one(n, o):
        if not isinstance(n, torch.Tensor):
            return n
        return torch.where(cond.to(n.device) if cond.device != n.device and
                           cond.device.type != "cpu" else cond, n, o)

    return optree.tree_map(one, new, old, **_NONE)


def _count(params: Any) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64, device=first_device(params))


# --------------------------------------------------------------------------------------------
# Selecting parameters: masks, labels, groups


def _path_names(tree: Any, prefix: str = "") -> Any:
    """A tree like ``tree`` whose leaves are dotted paths (``"encoder.layers.0.weight"``).

    Plain recursion over dicts, lists, tuples and NamedTuples (``torch.compile`` traces it;
    optree's path API does not compile); other pytree nodes fall back to optree.
    """
    if tree is None or isinstance(tree, torch.Tensor):
        return prefix[:-1]
    if isinstance(tree, Mapping):
        return type(tree)((k, _path_names(v, f"{prefix}{k}.")) for k, v in tree.items()) \
            if not isinstance(tree, dict) else {k: _path_names(v, f"{prefix}{k}.")
                                                for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_path_names(v, f"{prefix}{i}.") for i, v in enumerate(tree)))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_path_names(v, f"{prefix}{i}.") for i, v in enumerate(tree))
    if optree.tree_is_leaf(tree, **_NONE):
        return prefix[:-1]
    names = _tree.names(tree)
    return optree.tree_map(lambda n: f"{prefix}{n}" if n else prefix[:-1], names, **_NONE)


def _check_structures(owner: str, updates: Any, **trees: Any) -> None:
    """Raise :class:`TreeMismatchError` naming the first of ``trees`` (``None``: not given)
    whose structure is not that of ``updates``."""
    spec = _tree.structure(updates)
    for name, tree in trees.items():
        if tree is not None:
            _tree.flatten_like(tree, spec, f"{owner} {name}", "updates")


def _check_bools(owner: str, mask: Any) -> None:
    for i, leaf in enumerate(_tree.leaves(mask)):
        if leaf is not None and not isinstance(leaf, bool):  # (None: a None parameter)
            name = _tree.named_leaves(mask)[i][0]
            raise TypeError(f"{owner}: mask leaf {name!r} must be a Python bool, got "
                            f"{type(leaf).__name__} (masks are static)")


def masked(inner: Transform, mask: Any | Callable[[Any], Any]) -> Transform:
    r"""Applies ``inner`` only where ``mask`` is True; other updates pass through unchanged.

    .. math:: u_i \mapsto \mathrm{inner}(u)_i \text{ if } m_i \text{ else } u_i

    ``inner`` sees (and keeps state for) only the masked-in leaves: the others are ``None`` to it,
    so a global norm inside ``inner`` is the norm of the selected leaves (optax's ``masked``).

    Args:
        inner: the transform to apply.
        mask: a tree of Python bools shaped like the parameters, or a function
            ``params -> tree of bools`` (called on the updates when ``params`` is not given).
    """
    _check_transform(inner, "masked")

    def resolve(tree):
        m = mask(tree) if callable(mask) else mask
        _check_bools("masked", m)
        return optree.tree_map(lambda k: bool(k), m, **_NONE)  # None (a None param) -> False

    def init(params):
        return inner.init(_select(params, resolve(params)))

    def update(updates, state, params=None, hparams=None, **extra):
        m = resolve(params if params is not None else updates)
        try:
            sub_params = None if params is None else _select(params, m)
            selected = _select(updates, m)
        except ValueError:
            _check_structures("masked", updates, params=params, mask=m)
            raise
        out, state = inner.update(selected, state, sub_params, hparams, **extra)
        return _merge(m, out, updates), state

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


def freeze(mask: Any | Callable[[Any], Any] | None = None) -> Transform:
    """Zero updates (frozen parameters): for every leaf, or only where ``mask`` is True.

    No state. In :func:`partition` this is the transform of a frozen group.
    """
    from .transforms import set_to_zero

    return set_to_zero() if mask is None else masked(set_to_zero(), mask)


def _compile_rules(owner: str, rules: list) -> list[tuple[str, Any, Any]]:
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise TypeError(f"{owner}: rule {i} must be a pair (regex or list of regexes, label), "
                            f"got {rule!r}")
        patterns, label = rule
        if isinstance(patterns, str):
            patterns = [patterns]
        for p in patterns:
            out.append((p, re.compile(p), label))
    return out


def _rule_labels(owner: str, names: Any, compiled: list, default: Any, known: Any,
                 check_unused: bool) -> Any:
    used = set()

    def label(name):
        for pattern, regex, lab in compiled:
            if regex.search(name):
                used.add(pattern)
                return lab
        return default

    labels = optree.tree_map(label, names, **_NONE)
    if check_unused and _tree.leaves(names):  # (an empty tree matches nothing: no error)
        all_names = [n for n in _tree.leaves(names) if n is not None]
        unused = [p for p, regex, _ in compiled
                  if p not in used and not any(regex.search(n) for n in all_names)]
        if unused:
            raise ValueError(f"{owner}: regex(es) {unused} match no parameter name; the names "
                             f"are {_tree.leaves(names)[:20]}")
        if default is None:
            missing = [n for n, lab in zip(_tree.leaves(names), _tree.leaves(labels))
                       if lab is None]
            if missing:
                raise ValueError(f"{owner}: no rule matches parameter(s) {missing[:10]} and "
                                 f"there is no {'default'!r} transform")
    return labels


def label_params(params: Any, labels: Any, known: Any = None, *,
                 owner: str = "label_params") -> Any:
    """The tree of labels :func:`partition` uses for ``params``.

    Args:
        params: the parameter tree (``dict(model.named_parameters())`` or any nesting).
        labels: a tree of labels, a function ``params -> tree of labels``, or a list of rules
            ``(regex or list of regexes, label)`` matched with :func:`re.search` against each
            leaf's dotted path name, the first match winning; unmatched leaves get
            ``"default"``. A regex that matches no name is an error naming it.
        known: the valid labels (an error names any other), or None.
    """
    if isinstance(labels, list) and labels and isinstance(labels[0], (tuple, list)) \
            and len(labels[0]) == 2 and isinstance(labels[0][0], (str, list, tuple)):
        compiled = _compile_rules(owner, labels)
        default = "default" if known is None or "default" in known else None
        out = _rule_labels(owner, _path_names(params), compiled, default, known, True)
    else:
        out = labels(params) if callable(labels) else labels
    if known is not None:
        bad = sorted({str(x) for x in _tree.leaves(out) if x is not None and x not in known})
        if bad:
            raise ValueError(f"{owner}: label(s) {bad} have no transform; known: "
                             f"{sorted(map(str, known))}")
    return out


def partition(transforms: Mapping[Any, Transform], labels: Any) -> Transform:
    r"""A different transform for each group of parameters.

    Every leaf carries a label; ``transforms[label]`` runs on the leaves with that label (the
    others are ``None`` to it) and the outputs are merged. State and hparams are dicts keyed by
    label, so per-group hyperparameters (a learning rate per group) are addressable:
    ``hparams={"no_decay": {"lr": 1e-3}}``.

    Args:
        transforms: ``{label: transform}``; :func:`freeze` for frozen groups.
        labels: a tree of labels, a function ``params -> tree of labels``, or a list of rules
            ``(regex or list of regexes, label)`` over dotted parameter names, first match
            winning, unmatched leaves labelled ``"default"`` (see :func:`label_params`).
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError("partition: transforms must be a non-empty dict {label: transform}")
    for key, tx in transforms.items():
        _check_transform(tx, f"partition: transform {key!r}")
    keys = tuple(transforms)
    defaults = {k: transforms[k].hparams for k in keys}
    is_rules = isinstance(labels, list) and labels and isinstance(labels[0], (tuple, list)) \
        and len(labels[0]) == 2 and isinstance(labels[0][0], (str, list, tuple))
    compiled = _compile_rules("partition", labels) if is_rules else None
    default = "default" if "default" in transforms else None

    def resolve(tree, check):
        if compiled is not None and not check:  # the fast path inside update: no error checks
            return _rule_labels("partition", _path_names(tree), compiled, default, keys, False)
        return label_params(tree, labels, keys, owner="partition")

    def init(params):
        lab = resolve(params, True)
        return {k: transforms[k].init(_select(params, _is(lab, k))) for k in keys}

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "partition hparams")
        if not isinstance(state, Mapping) or set(state) != set(keys):
            raise _tree.TreeMismatchError(
                f"partition: expected a state dict with keys {list(keys)}, got "
                f"{sorted(state) if isinstance(state, Mapping) else type(state).__name__}")
        lab = resolve(params if params is not None else updates, False)
        outs, new_state = {}, {}
        for k in keys:
            keep = _is(lab, k)
            try:
                sub_params = None if params is None else _select(params, keep)
                selected = _select(updates, keep)
            except ValueError:
                _check_structures("partition", updates, params=params, labels=lab)
                raise
            outs[k], new_state[k] = transforms[k].update(selected, state[k], sub_params, h[k],
                                                         **extra)
        # (a leaf labelled None, e.g. by a function of a None parameter, passes through)
        merged = optree.tree_map(lambda lab_, u, *xs: xs[keys.index(lab_)] if lab_ in keys
                                 else u, lab, updates, *(outs[k] for k in keys), **_NONE)
        return merged, new_state

    return Transform(init, _execute.owning(update, transforms.values()), defaults)


def _is(labels: Any, key: Any) -> Any:
    return optree.tree_map(lambda lab: lab == key, labels, **_NONE)


# --------------------------------------------------------------------------------------------
# Hyperparameter injection


class InjectHparamsState(NamedTuple):
    """State of :func:`inject_hparams`.

    Attributes:
        count: the step count (0-d int64), the schedules' argument.
        hparams: ``{path: value}``: the value each injected hyperparameter had at the last
            update (0-d float64; ``NaN`` before the first one). Read with :func:`get_hparam`.
        inner_state: the wrapped transform's state.
    """

    count: torch.Tensor
    hparams: dict
    inner_state: Any


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
                   from_state: Mapping[str, Callable[[Any, torch.Tensor], Any]] | None = None
                   ) -> Transform:
    r"""Drives hyperparameters of ``inner`` by schedules or by functions of its state.

    Hyperparameters are addressed by their dotted path in ``inner.hparams``: ``"lr"`` in an
    alias, ``"adam.betas.0"`` or ``"lr.lr"`` in a named chain ``chain(adam=..., lr=...)``,
    ``"1.momentum"`` in a positional chain. At step :math:`t` (counted in the state, from 0)
    the value is ``schedule(t)`` or ``fn(inner_state, t)``; it is stored in the state, so
    :func:`get_hparam` reads it back. The wrapper's hparams are ``inner``'s, with each
    scheduled entry replaced by the schedule's own hparams dict (so they stay values: tensors,
    batched, differentiable), and each entry computed from the state replaced by ``None``
    (it is no hyperparameter: a value given for it is not read).

    Args:
        inner: the transform whose hyperparameters are injected.
        schedules: ``{path: Schedule or callable step -> value}``.
        from_state: ``{path: fn(inner_state, count) -> value}``, for values computed from the
            state (e.g. a learning rate from a running statistic).
    """
    _check_transform(inner, "inject_hparams")
    schedules = {k: as_schedule(v, f"inject_hparams[{k!r}]") for k, v in (schedules or {}).items()}
    from_state = dict(from_state or {})
    both = set(schedules) & set(from_state)
    if both:
        raise ValueError(f"inject_hparams: {sorted(both)} given both a schedule and a function")
    for path in (*schedules, *from_state):
        _get_in(inner.hparams, _split_path(path), path)
    defaults = inner.hparams
    for path, s in schedules.items():
        defaults = _set_in(defaults, _split_path(path), s.hparams)
    for path in from_state:
        defaults = _set_in(defaults, _split_path(path), None)
    paths = tuple(schedules) + tuple(from_state)

    def init(params):
        count = _count(params)
        nan = torch.full((), float("nan"), dtype=scalar_dtype(torch.empty(0, device=count.device)),
                         device=count.device)
        return InjectHparamsState(count, {p: nan for p in paths}, inner.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "inject_hparams hparams")
        check_state("inject_hparams", state, InjectHparamsState)
        values = {}
        for path, s in schedules.items():
            keys = _split_path(path)
            values[path] = s(state.count, _get_in(h, keys, path))
        for path, fn in from_state.items():
            v = fn(state.inner_state, state.count)
            values[path] = torch.as_tensor(v, dtype=torch.float64, device=state.count.device) \
                if not isinstance(v, torch.Tensor) else v.to(torch.float64)
        for path, v in values.items():
            h = _set_in(h, _split_path(path), v)
        out, inner_state = inner.update(updates, state.inner_state, params, h, **extra)
        stored = {p: values[p].to(state.hparams[p].dtype).reshape(()) for p in paths}
        return out, InjectHparamsState(state.count + 1, stored, inner_state)

    return Transform(init, _execute.owning(update, [inner]), defaults)


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


# --------------------------------------------------------------------------------------------
# Accumulation, skipping, conditions


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
        with _execute.keep_state():  # the old inner state may be kept
            # (first: its errors name a leaf of another shape, dtype or device)
            out, new_inner = inner.update(updates, state.inner_state, params, hparams, **extra)
        finite = _all_finite(updates, state.notfinite_count)
        notfinite = torch.where(finite, torch.zeros_like(state.notfinite_count),
                                state.notfinite_count + 1)
        apply = finite | (notfinite > max_consecutive_errors)
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


# --------------------------------------------------------------------------------------------
# Gradient surgery


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


# --------------------------------------------------------------------------------------------
# Weight averaging


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`.

    Attributes:
        count: fast steps taken (0-d int64).
        slow: the slow weights (a tree like the parameters).
        inner_state: the fast optimizer's state.
    """

    count: torch.Tensor
    slow: Any
    inner_state: Any


def lookahead(inner: Transform, sync_period: int = 6, alpha: float = 0.5) -> Transform:
    r"""Lookahead (Zhang et al., 2019): ``k`` fast steps of ``inner``, then the slow weights
    move ``alpha`` of the way to the fast ones and the fast weights restart from them.

    With fast weights :math:`\theta` and slow weights :math:`\phi` (initially the parameters),
    after every ``k``-th fast step :math:`\phi \leftarrow \phi + \alpha(\theta - \phi)`,
    :math:`\theta \leftarrow \phi`. The returned update moves the parameters to :math:`\theta`,
    so ``apply_updates`` keeps them the fast weights. Needs ``params``. The hparams are
    ``{"alpha": alpha, "inner": inner.hparams}``.

    Args:
        inner: the fast optimizer.
        sync_period: ``k`` (static int >= 1; default 6).
        alpha: slow step size in [0, 1] (default 0.5).
    """
    _check_transform(inner, "lookahead")
    if not isinstance(sync_period, int) or sync_period < 1:
        raise HParamError(f"lookahead: sync_period must be an int >= 1, got {sync_period!r}")
    check_hparam("lookahead", "alpha", alpha, ge=0, le=1)
    defaults = {"alpha": alpha, "inner": inner.hparams}

    def init(params):
        return LookaheadState(_count(params), _tree.map(torch.clone, params), inner.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "lookahead hparams")
        check_state("lookahead", state, LookaheadState)
        if missing_params("lookahead", updates, params):
            return updates, state
        fast_u, inner_state = inner.update(updates, state.inner_state, params, h["inner"],
                                           **extra)
        sync = torch.remainder(state.count + 1, sync_period) == 0

        def rule(hh, u, slow, p):
            fast = p + u
            new_slow = torch.where(sync, slow + hh["alpha"] * (fast - slow), slow)
            return torch.where(sync, new_slow - p, u), new_slow

        out, slow = elementwise(rule, {"alpha": h["alpha"]}, fast_u, (state.slow,), (params,),
                                name="lookahead", input_names=("params",), state_like=(LIKE,))
        return out, LookaheadState(state.count + 1, slow, inner_state)

    return Transform(init, _execute.owning(update, [inner]), defaults)


class EmaState(NamedTuple):
    """State of :func:`ema`: per-leaf step count (0-d int64) and the moving average."""

    count: Any
    ema: Any


def _ema_rule(h, g, t, m, *, debias):
    decay = h["decay"]
    t = t + 1
    m = decay * m + (1 - decay) * g.to(m.dtype)
    if not debias:
        return m.to(g.dtype), t, m
    return (m / (1 - decay ** t.to(scalar_dtype(g)))).to(g.dtype), t, m


def ema(decay: float, debias: bool = True,
        accumulator_dtype: torch.dtype | None = None) -> Transform:
    r"""Exponential moving average of the updates (optax's ``ema``).

    .. math:: m_t = \beta m_{t-1} + (1-\beta) u_t, \qquad u_t \mapsto m_t/(1-\beta^t)
              \text{ (debias) or } m_t

    Args:
        decay: ``β`` in [0, 1].
        debias: divide by :math:`1-\beta^t` (static; default True).
        accumulator_dtype: dtype of ``m`` (default: the parameter's).
    """
    check_hparam("ema", "decay", decay, ge=0, le=1)
    defaults = {"decay": decay}

    def rule(h, g, t, m):
        return _ema_rule(h, g, t, m, debias=debias)

    def init(params):
        return EmaState(init_count(params), _tree.map(
            lambda p: torch.zeros_like(p, dtype=accumulator_dtype if p.is_floating_point()
                                       else None), params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "ema hparams")
        check_state("ema", state, EmaState)
        out, count, m = elementwise(rule, h, updates, (state.count, state.ema), name="ema",
                                    state_like=(None, LIKE if accumulator_dtype is None
                                                else SHAPED))
        return out, EmaState(count, m)

    return Transform(init, update, defaults)


class AverageParamsState(NamedTuple):
    """State of :func:`average_params`.

    Attributes:
        n_averaged: how many parameter values were averaged, per leaf (0-d int64).
        average: the averaged parameters (``AveragedModel``'s weights).
    """

    n_averaged: Any
    average: Any


def average_params(decay: float | None = None) -> Transform:
    r"""Averages the parameters after each update, as ``torch.optim.swa_utils.AveragedModel``.

    Put it last in a chain (after the learning rate): it passes the updates through unchanged
    and averages the new parameters :math:`\theta_t = p + u`. The first average is a copy;
    then SWA (Izmailov et al., 2018; ``decay=None``) keeps the running mean
    :math:`\bar\theta \leftarrow \bar\theta + (\theta_t - \bar\theta)/(n+1)`, EMA
    (``get_ema_multi_avg_fn(decay)``) :math:`\bar\theta \leftarrow \beta\bar\theta +
    (1-\beta)\theta_t`. Read it from ``state.average``. Needs ``params``.

    Args:
        decay: ``β`` for an EMA (hparam ``"decay"``), or None for the SWA mean.
    """
    swa = decay is None
    defaults = {} if swa else {"decay": decay}
    if not swa:
        check_hparam("average_params", "decay", decay, ge=0, le=1)

    def rule(h, u, n, avg, p):
        new = p + u
        if swa:
            step = avg + (new - avg) / (n + 1).to(scalar_dtype(u))
        else:
            step = h["decay"] * avg + (1 - h["decay"]) * new
        return u, n + 1, torch.where(n == 0, new, step)

    def init(params):
        return AverageParamsState(init_count(params), _tree.map(torch.clone, params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "average_params hparams")
        check_state("average_params", state, AverageParamsState)
        if missing_params("average_params", updates, params):
            return updates, state
        out, n, avg = elementwise(rule, h, updates, (state.n_averaged, state.average),
                                  (params,), name="average_params", input_names=("params",),
                                  state_like=(None, LIKE))
        return out, AverageParamsState(n, avg)

    return Transform(init, update, defaults)


# --------------------------------------------------------------------------------------------
# One buffer per dtype/device


def _group_key(x: torch.Tensor) -> str:
    return f"{str(x.dtype).replace('torch.', '')}@{x.device}"


def _leaves_in_map_order(tree: Any) -> list:
    """The leaves sorted by their path name: a layout that does not depend on how a traversal
    orders dict keys (optree sorts them, ``torch.compile``'s tracing of it may not)."""
    pairs: list = []
    optree.tree_map(lambda n, x: pairs.append((n, x)), _path_names(tree), tree, **_NONE)
    return [x for _, x in sorted(pairs, key=lambda nx: nx[0])]


def _refill(tree: Any, ordered: list) -> Any:
    """Inverse of :func:`_leaves_in_map_order`."""
    names = _path_names(tree)
    keys: list = []
    optree.tree_map(lambda n: keys.append(n), names, **_NONE)
    by_name = dict(zip(sorted(keys), ordered))
    return optree.tree_map(lambda n: by_name[n], names, **_NONE)


def _flat_groups(leaves: list, tree: Any, tree_name: str) -> dict:
    """``leaves`` (of ``tree``) concatenated, one buffer per (dtype, device)."""
    groups: dict = {}
    for x in leaves:
        if x is not None:
            if _tree.layout(x) is not None:
                name = next(n for n, y in _tree.named_leaves(tree) if _tree.layout(y) is not None)
                raise TypeError(
                    f"flatten: {tree_name} leaf {name!r} is a DTensor (FSDP2, tensor parallel); "
                    "one buffer cannot hold shards of several leaves: run the inner transform "
                    "without flatten")
            groups.setdefault(_group_key(x), []).append(x.reshape(-1))
    return {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in groups.items()}


def flatten(inner: Transform) -> Transform:
    """Runs ``inner`` on one contiguous buffer per (dtype, device) instead of many leaves.

    The fast path for many small tensors (one kernel per buffer instead of one per leaf).
    ``inner`` sees a dict ``{"float32@cpu": flat, ...}``; its state is kept on those buffers.
    Only for ``inner`` transforms that act elementwise or on global norms: a per-leaf norm
    (``clip_by_norm``) becomes a per-buffer one. Not for DTensor leaves (a clear
    ``TypeError``). A ``None`` update whose parameter exists counts
    as a zero update inside the buffer (its output is still ``None``; pass ``params``).
    """
    _check_transform(inner, "flatten")

    def init(params):
        return inner.init(_flat_groups(_leaves_in_map_order(params), params, "params"))

    def update(updates, state, params=None, hparams=None, **extra):
        g_leaves = _leaves_in_map_order(updates)
        p_leaves = None if params is None else _leaves_in_map_order(params)
        if p_leaves is not None:  # (leaves pair by their sorted names: same tree, same leaves)
            _tree.flatten_like(params, _tree.structure(updates), "flatten params", "updates")
            for g, p in zip(g_leaves, p_leaves):
                if g is not None and p is not None and \
                        _tree.leaf_mismatch(g, p, "parameter") is not None:
                    _tree.check_leaves("flatten", updates, params, "flatten params",
                                          "parameter")
        filled = g_leaves if p_leaves is None else [
            g if g is not None or p is None else torch.zeros_like(p)
            for g, p in zip(g_leaves, p_leaves)]
        flat_p = None if p_leaves is None else _flat_groups(p_leaves, params, "params")
        out, state = inner.update(_flat_groups(filled, updates, "update"), state, flat_p, hparams,
                                  **extra)
        pieces: dict = {}
        for k, x in out.items():
            sizes = [f.numel() for f in filled if f is not None and _group_key(f) == k]
            pieces[k] = list(torch.split(x, sizes)) if len(sizes) > 1 else [x]
        flat_out = []
        for g, f in zip(g_leaves, filled):
            if f is None:
                flat_out.append(None)
                continue
            piece = pieces[_group_key(f)].pop(0)
            flat_out.append(None if g is None else piece.reshape(g.shape))
        return _refill(updates, flat_out), state

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)

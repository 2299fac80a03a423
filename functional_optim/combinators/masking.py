"""Selecting parameters: masks, labels, groups (:func:`masked`, :func:`freeze`,
:func:`label_params`, :func:`partition`).

Selecting a subset of the parameters hands the inner transform the parameter tree with a
:class:`MaskedNode` in place of the other leaves: such leaves cost nothing and carry no state, so
the inner state exists only for the leaves it owns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import optree
import torch

from .. import _execute
from .. import tree as _tree
from ..base import Transform, _check_transform, resolve_hparams
from ..tree_math import _ParamsPlaceholder
from ._common import _NONE

__all__ = ["MaskedNode", "masked", "partition", "label_params", "freeze"]


class MaskedNode(NamedTuple):
    """Stands for a leaf an inner transform does not own (:func:`masked`, :func:`partition`).

    An empty node: it has no leaves, so the inner transform neither computes nor keeps state for
    it (its state holds a ``MaskedNode`` there too, which ``vmap`` accepts, unlike ``None``).
    """


def _select(tree: Any, keep: Any) -> Any:
    """``tree`` with a :class:`MaskedNode` where ``keep`` (a tree of bools) is False (the
    placeholder of :func:`~functional_optim.tree_math.map_params` stays itself)."""
    if isinstance(tree, _ParamsPlaceholder):
        return tree
    return optree.tree_map(lambda k, x: x if k or x is None else MaskedNode(), keep, tree,
                           **_NONE)


def _merge(keep: Any, inner: Any, outer: Any) -> Any:
    """``inner``'s leaf where ``keep`` is True, ``outer``'s elsewhere."""
    return optree.tree_map(lambda k, a, b: a if k else b, keep, inner, outer, **_NONE)


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


def _mask_extra(extra: dict, updates: Any, keep: Any) -> dict:
    """The keyword arguments shaped like the updates (a ``grad=``, say) with the same leaves
    masked out."""
    spec = _tree.structure(updates)
    return {k: _select(v, keep) if _tree.structure(v) == spec else v for k, v in extra.items()}


def masked(inner: Transform, mask: Any | Callable[[Any], Any], *,
           mask_compatible_extra_args: bool = False) -> Transform:
    r"""Applies ``inner`` only where ``mask`` is True; other updates pass through unchanged.

    .. math:: u_i \mapsto \mathrm{inner}(u)_i \text{ if } m_i \text{ else } u_i

    ``inner`` sees (and keeps state for) only the masked-in leaves: the others are ``None`` to it,
    so a global norm inside ``inner`` is the norm of the selected leaves (optax's ``masked``).

    Args:
        inner: the transform to apply.
        mask: a tree of Python bools shaped like the parameters (or a prefix of it: one bool
            for a subtree), or a function ``params -> tree of bools`` (called on the updates
            when ``params`` is not given).
        mask_compatible_extra_args: mask ``update``'s keyword arguments shaped like the
            updates the same way (structural).
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
        if mask_compatible_extra_args:
            extra = _mask_extra(extra, updates, m)
        out, state = inner.update(selected, state, sub_params, hparams, **extra)
        return _merge(m, out, updates), state

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


def freeze(mask: Any | Callable[[Any], Any] | None = None) -> Transform:
    """Zero updates (frozen parameters): for every leaf, or only where ``mask`` is True.

    No state. In :func:`partition` this is the transform of a frozen group.
    """
    from ..transforms import set_to_zero

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


def partition(transforms: Mapping[Any, Transform], labels: Any, *,
              mask_compatible_extra_args: bool = False) -> Transform:
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
        mask_compatible_extra_args: give each transform ``update``'s keyword arguments shaped
            like the updates restricted to its leaves (structural).
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
            mine = _mask_extra(extra, updates, keep) if mask_compatible_extra_args else extra
            outs[k], new_state[k] = transforms[k].update(selected, state[k], sub_params, h[k],
                                                         **mine)
        # (a leaf labelled None, e.g. by a function of a None parameter, passes through)
        merged = optree.tree_map(lambda lab_, u, *xs: xs[keys.index(lab_)] if lab_ in keys
                                 else u, lab, updates, *(outs[k] for k in keys), **_NONE)
        return merged, new_state

    return Transform(init, _execute.owning(update, transforms.values()), defaults)


def _is(labels: Any, key: Any) -> Any:
    return optree.tree_map(lambda lab: lab == key, labels, **_NONE)

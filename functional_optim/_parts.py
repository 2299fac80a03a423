"""The parameter-shaped parts of a transform's state (where ``init`` of a placeholder puts
one, as :func:`~functional_optim.tree_math.map_params` finds them), and trees of parameters
as dicts of their leaves by position: what lets the programs and fused steps, which read
dicts, take a list of parameters or nested dicts."""

from __future__ import annotations

import weakref
from typing import Any

import optree
import torch

from .tree_math import _ParamsPlaceholder

__all__ = ["Parts", "by_position", "flat_dict", "parts_of"]


def flat_dict(tree: Any) -> bool:
    """Whether ``tree`` is a dict of leaves (its first value a tensor), which the programs and
    fused steps read by key; another tree (a list, nested dicts) goes :func:`by_position`.
    (Each path checks every leaf itself.)"""
    return type(tree) is dict and isinstance(next(iter(tree.values()), None), torch.Tensor)


def _placeholder(x: Any) -> bool:
    return isinstance(x, _ParamsPlaceholder)


class Parts:
    """The parameter-shaped parts of a transform's state, each a dict of the parameters'
    leaves (or a tree like the parameters): read and replaced in a fixed order, through a spec
    made once (a step reads them twice)."""

    def __init__(self, marked: Any) -> None:
        self.spec = optree.tree_structure(marked, is_leaf=_placeholder, none_is_leaf=True)
        marks = optree.tree_leaves(marked, is_leaf=_placeholder, none_is_leaf=True)
        self.at = [k for k, m in enumerate(marks) if _placeholder(m)]
        self.only = not any(isinstance(m, torch.Tensor) for m in marks)
        """Whether the state is all parameter-shaped (no schedule's count, no global
        statistic: what a step on some of the parameters would have to share)."""

    def columns(self, state: Any) -> list:
        parts = self.spec.flatten_up_to(state)
        return [parts[k] for k in self.at]

    def rebuilt(self, state: Any, columns: list) -> Any:
        """``state`` with its parameter-shaped parts replaced by ``columns``."""
        parts = self.spec.flatten_up_to(state)
        for k, column in zip(self.at, columns):
            parts[k] = column
        return self.spec.unflatten(parts)


_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parts_of(tx: Any) -> Parts | None:
    """The :class:`Parts` of ``tx``'s state (``None`` where ``init`` reads its parameters'
    structure: a partition, a mask tree), found once per ``init``."""
    key = getattr(tx.init, "__wrapped__", tx.init)  # (the function a checked init calls)
    try:
        return _PARTS[key]
    except KeyError:
        pass
    except TypeError:  # (an init that takes no weak reference: found each time)
        key = None
    try:
        parts = Parts(tx.init(_ParamsPlaceholder()))
    except (TypeError, ValueError):
        parts = None
    if key is not None:
        _PARTS[key] = parts
    return parts


def by_position(parts: Parts, params: Any, grads: Any, state: Any) -> tuple | None:
    """``(params, grads, state, back)``: the trees ``params`` and ``grads`` (of one structure)
    as dicts of their leaves by position in optree's order, ``state`` with its parameter-shaped
    parts (``parts``) so too, and ``back(lead, state)``, which puts such a result (a dict by
    position, a state of such parts) back into the trees' structure; ``None`` where the trees
    do not match (the chain names what differs)."""
    flat, tree = optree.tree_flatten(params, none_is_leaf=True)
    try:
        gs = tree.flatten_up_to(grads)
        columns = [dict(enumerate(tree.flatten_up_to(c))) for c in parts.columns(state)]
    except (ValueError, TypeError):
        return None
    n = range(len(flat))

    def back(lead: dict, new: Any) -> tuple:
        made = [tree.unflatten([c[i] for i in n]) for c in parts.columns(new)]
        return tree.unflatten([lead[i] for i in n]), parts.rebuilt(new, made)

    return dict(enumerate(flat)), dict(enumerate(gs)), parts.rebuilt(state, columns), back


"""How the inner transform sees the leaves: one buffer per dtype/device (:func:`flatten`);
complex leaves as pairs of real ones (:func:`split_real_and_imaginary`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import _execute
from .. import tree as _tree
from ..base import Transform, _check_transform, check_state
from ._common import _NONE
from .masking import _path_names

__all__ = [
    "RealImaginary", "SplitRealAndImaginaryState", "flatten", "split_real_and_imaginary",
]


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


class RealImaginary(NamedTuple):
    """The real and imaginary parts of a complex leaf, as two real leaves."""

    real: torch.Tensor | None
    imaginary: torch.Tensor | None


class SplitRealAndImaginaryState(NamedTuple):
    """:func:`split_real_and_imaginary`'s state: the inner transform's, on the split tree."""

    inner_state: Any


def _split(tree: Any, like: Any = None) -> Any:
    """``tree`` with each complex leaf as a :class:`RealImaginary` pair; a ``None`` leaf whose
    leaf of ``like`` (the parameters) is complex becomes a pair of ``None``."""

    def one(x, p=None):
        if x is not None and x.is_complex():
            return RealImaginary(x.real, x.imag)
        if x is None and p is not None and p.is_complex():
            return RealImaginary(None, None)
        return x

    if like is None:
        return optree.tree_map(one, tree, **_NONE)
    _tree.flatten_like(like, _tree.structure(tree), "split_real_and_imaginary params", "updates")
    return optree.tree_map(one, tree, like, **_NONE)


def _merge(updates: Any, out: Any) -> Any:
    """The inner transform's ``out`` on the split tree, each :class:`RealImaginary` pair merged
    back into a complex leaf (``None`` where the update of ``updates`` is ``None``)."""

    def one(g, piece):
        if isinstance(piece, RealImaginary):
            return None if g is None else torch.complex(piece.real, piece.imaginary)
        return piece

    return optree.tree_map(one, updates, out, **_NONE)


def split_real_and_imaginary(inner: Transform) -> Transform:
    """Runs ``inner`` on the real and imaginary parts of complex leaves as separate real leaves.

    Each complex leaf ``z = x + iy`` (of the updates, the parameters, ``inner``'s state) is
    replaced by the pair ``RealImaginary(x, y)``; ``inner`` transforms the pairs as two real
    leaves and each output pair ``(u, v)`` becomes the complex update ``u + iv``. Real leaves pass
    through unchanged. So a complex parameter behaves as two real parameters, for elementwise
    rules and for those that act per leaf (a norm, a shape: Muon, a factored moment) alike
    (optax's ``contrib.split_real_and_imaginary``).

    PyTorch's gradient of a real loss with respect to a complex ``z`` is already
    ``∂L/∂x + i ∂L/∂y`` (JAX's is its conjugate, which optax's users conjugate by hand): pass it
    as it is. The hyperparameters are ``inner``'s; the state is a
    :class:`SplitRealAndImaginaryState` holding ``inner``'s state on the split tree.
    """
    _check_transform(inner, "split_real_and_imaginary")

    def init(params):
        return SplitRealAndImaginaryState(inner.init(_split(params)))

    def update(updates, state, params=None, hparams=None, **extra):
        check_state("split_real_and_imaginary", state, SplitRealAndImaginaryState)
        split_p = None if params is None else _split(params)
        out, inner_state = inner.update(_split(updates, params), state.inner_state, split_p,
                                        hparams, **extra)
        return _merge(updates, out), SplitRealAndImaginaryState(inner_state)

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)

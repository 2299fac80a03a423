"""The execution mechanism: an update rule written once as math on tensors, run leaf by leaf.

A *rule* is a function ``rule(h, g, *states, *inputs) -> (u, *states)`` on single tensors: ``h`` is
the hyperparameter tree with tensor entries cast to the leaf's scalar dtype, ``g`` the incoming
update, ``states`` the leaf's state tensors (returned, updated) and ``inputs`` read-only tensors
(the parameter, a mask entry). Rules use only out-of-place torch ops, so the per-leaf path is pure
and works under ``torch.func`` transforms, ``torch.compile`` and CUDA-graph capture.
"""

from __future__ import annotations

from typing import Any, Callable

import optree
import torch

from . import tree as _tree
from .base import MissingParamsError

def scalar_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype of the 0-d coefficients (bias corrections, tensor hparams) used on a leaf.

    float64, as torch.optim's Python-float arithmetic computes them (``1 - 0.999**t`` loses five
    digits in float32), on devices that have it (float32 on MPS). Elementwise math on the leaf
    itself stays in the leaf's dtype: a 0-d coefficient does not promote the tensor it scales.
    """
    return torch.float32 if like.device.type == "mps" else torch.float64


def cast_hparams(hparams: Any, like: torch.Tensor) -> Any:
    """Tensor hyperparameters cast to ``scalar_dtype(like)``; numbers left as they are."""
    dtype = scalar_dtype(like)
    return optree.tree_map(
        lambda h: h.to(dtype) if isinstance(h, torch.Tensor) and h.dtype != dtype else h, hparams
    )


def _as_real(x):
    return torch.view_as_real(x) if x is not None and x.is_complex() else x


def elementwise(
    rule: Callable,
    hparams: Any,
    updates: Any,
    states: tuple = (),
    inputs: tuple = (),
    *,
    name: str,
    complex_as_real: bool = False,
    real_only: bool = False,
    input_names: tuple[str, ...] = (),
) -> tuple:
    """Run ``rule`` on every leaf of ``updates``; return ``(new_updates, *new_states)``.

    A ``None`` update leaf stays ``None`` and keeps its state. Every tree in ``states`` and
    ``inputs`` must have the structure of ``updates`` (else :class:`TreeMismatchError`).

    Args:
        complex_as_real: run the rule on ``torch.view_as_real`` views of complex leaves (how
            torch.optim treats complex parameters: real and imaginary parts as separate reals).
        real_only: raise a clear ``TypeError`` for complex leaves.
        input_names: names of the ``inputs`` trees in error messages (e.g. ``("params",)``).

    Each result keeps the dtype of the tensor it replaces (a 0-d float64 coefficient would
    otherwise promote a 0-d leaf) and must keep its shape: a result whose shape differs (a
    parameter or state that broadcast against the update) raises :class:`TreeMismatchError`.
    """
    n_states = len(states)
    cache: dict = {}
    position = [0]  # leaf index, for error messages (optree visits leaves in order)

    def input_name(k: int) -> str:
        return input_names[k] if k < len(input_names) else "input"

    def run(g, *rest):
        i = position[0]
        position[0] += 1
        leaf_states, leaf_inputs = list(rest[:n_states]), rest[n_states:]
        if g is None:
            return _Out((None, *leaf_states))
        if leaf_states and leaf_states[-1] is None:
            raise _tree.TreeMismatchError(
                f"{name}: update leaf {_leaf_name(updates, i)} has no state (its parameter was "
                "None at init)"
            )
        if not isinstance(g, torch.Tensor):
            raise TypeError(
                f"{name}: update leaf {_leaf_name(updates, i)} must be a tensor or None, got "
                f"{type(g).__name__}"
            )
        if g.is_sparse:
            raise TypeError(
                f"{name} does not support sparse updates (leaf {_leaf_name(updates, i)})")
        if not (g.is_floating_point() or g.is_complex()):
            raise TypeError(
                f"{name} needs floating-point or complex updates (leaf "
                f"{_leaf_name(updates, i)}, dtype {g.dtype})"
            )
        if g.is_complex() and real_only:
            raise TypeError(
                f"{name} does not support complex updates (leaf {_leaf_name(updates, i)}, "
                f"dtype {g.dtype})"
            )
        for k, x in enumerate(leaf_inputs):
            if x is None:
                raise MissingParamsError(
                    f"{name}: leaf {_leaf_name(updates, i)} has an update but its "
                    f"{input_name(k)} is None"
                )
            if isinstance(x, torch.Tensor) and x.shape != g.shape:
                raise _tree.TreeMismatchError(
                    f"{name}: leaf {_leaf_name(updates, i)}: the update has shape "
                    f"{tuple(g.shape)} but the {input_name(k)} has shape {tuple(x.shape)}"
                )
        key = (g.dtype, g.device)
        h = cache.get(key)
        if h is None:
            h = cache[key] = cast_hparams(hparams, g)
        args = leaf_states + list(leaf_inputs)
        if g.is_complex() and complex_as_real:
            res = rule(h, _as_real(g), *(_as_real(a) for a in args))
            res = [torch.view_as_complex(r) if r is not None and like is not None and
                   like.is_complex() else r for r, like in zip(res, [g, *leaf_states])]
        else:
            res = rule(h, g, *args)
        return _Out(tuple(_like(r, like, name, updates, i, j)
                          for j, (r, like) in enumerate(zip(res, [g, *leaf_states]))))

    trees = (updates, *states, *inputs)
    try:
        out = optree.tree_map(run, *trees, none_is_leaf=True)
    except ValueError:
        spec = _tree.structure(updates)
        names = [f"{name} state"] * n_states + [f"{name} {input_name(k)}"
                                                 for k in range(len(inputs))]
        for tree, tree_name in zip(trees[1:], names):
            _tree.flatten_like(tree, spec, tree_name, "updates")
        raise
    return tuple(optree.tree_map(lambda o, j=j: o.values[j], out, none_is_leaf=True)
                 for j in range(1 + n_states))


class _Out:
    """One leaf's results; an opaque leaf, so a tree of them splits into one tree per result."""

    __slots__ = ("values",)

    def __init__(self, values: tuple):
        self.values = values


def _like(r: Any, like: Any, name: str, updates: Any, i: int, j: int) -> Any:
    """``r`` in ``like``'s dtype; a clear error when a broadcast changed its shape."""
    if not isinstance(r, torch.Tensor) or not isinstance(like, torch.Tensor):
        return r
    if r.shape != like.shape:
        what = "update" if j == 0 else f"state {j - 1}"
        raise _tree.TreeMismatchError(
            f"{name}: leaf {_leaf_name(updates, i)}: the {what} came out with shape "
            f"{tuple(r.shape)} instead of {tuple(like.shape)}; the update, its state and its "
            "parameter must all have the same shape"
        )
    return r if r.dtype == like.dtype else r.to(like.dtype)


def _leaf_name(tree: Any, i: int) -> str:
    """The dotted path of leaf ``i`` of ``tree`` (for error messages only)."""
    return repr(_tree.named_leaves(tree)[i][0] or "<root>")


def first_device(tree: Any) -> torch.device:
    """The device of the first tensor leaf (CPU for a tree with none)."""
    for x in _tree.leaves(tree):
        if x is not None:
            return x.device
    return torch.device("cpu")


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    r"""``sqrt(x)`` for ``x > 0``, ``0`` otherwise, with a finite gradient at ``0``.

    :math:`\frac{d}{dx}\sqrt{x}` is infinite at 0, so differentiating an update whose second moment
    is exactly zero would give ``0 * inf = NaN``; here that gradient is 0.
    """
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, 1.0)), 0.0)


def init_count(params: Any) -> Any:
    """A per-leaf step counter: an int64 0-d zero on each parameter's device."""
    return _tree.map(lambda p: torch.zeros((), dtype=torch.int64, device=p.device), params)

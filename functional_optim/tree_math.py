"""Math on trees: products, reductions, fills, moments, casts, random trees and keyed lookups.

The functions of :mod:`functional_optim.tree` (``add``, ``sub``, ``scale``, ``cast``,
``zeros_like``, ``global_norm``, ``num_elements``) and these together are the vocabulary of
optax's ``optax.tree`` on optree pytrees of torch tensors. As everywhere in the library a
``None`` leaf stands for "no tensor" and passes through as ``None``; structures that must match
and do not raise :class:`~functional_optim.tree.TreeMismatchError` naming both.

Reductions (:func:`vdot`, :func:`sum`, :func:`max`, :func:`min`, :func:`norm`) return a 0-d
tensor on the first leaf's device and are DTensor-aware like
:func:`~functional_optim.tree.global_norm`: the leaves of each device mesh reduce across their
shards (one all-reduce per mesh, no host sync). They trace under ``torch.func`` and
``torch.compile``; :func:`allclose`, :func:`dtype` and the random trees are host utilities.
"""

from __future__ import annotations

import builtins
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import optree
import torch

from . import tree as _tree
from ._execute import scalar_dtype, scalars_once
from .numerics import abs_sq

__all__ = [
    "mul",
    "div",
    "vdot",
    "sum",
    "max",
    "min",
    "norm",
    "conj",
    "real",
    "ones_like",
    "full_like",
    "clip",
    "where",
    "batch_shape",
    "allclose",
    "cast_like",
    "dtype",
    "bias_correction",
    "update_moment",
    "update_moment_per_elem_norm",
    "update_infinity_moment",
    "split_generator_like",
    "random_like",
    "NamedTupleKey",
    "get_all_with_path",
    "get",
    "set",
    "map_params",
]

_NONE = {"none_is_leaf": True}


# -- elementwise ---------------------------------------------------------------------------------


def mul(a: Any, b: Any) -> Any:
    """``a * b`` leaf-wise."""
    return _tree.map(torch.mul, a, b)


def div(a: Any, b: Any) -> Any:
    """``a / b`` leaf-wise."""
    return _tree.map(torch.div, a, b)


def conj(tree: Any) -> Any:
    """The complex conjugate of every leaf (real leaves unchanged)."""
    return _tree.map(lambda x: torch.conj(x).resolve_conj() if x.is_complex() else x, tree)


def real(tree: Any) -> Any:
    """The real part of every leaf (real leaves unchanged)."""
    return _tree.map(lambda x: torch.real(x) if x.is_complex() else x, tree)


def ones_like(tree: Any, dtype: torch.dtype | None = None) -> Any:
    """A tree of ones shaped like ``tree`` (optionally of another dtype)."""
    return _tree.map(lambda x: torch.ones_like(x, dtype=dtype), tree)


def full_like(tree: Any, fill_value: float | torch.Tensor, dtype: torch.dtype | None = None
              ) -> Any:
    """A tree shaped like ``tree`` whose every element is ``fill_value`` (a number or a 0-d
    tensor, which stays differentiable), in ``dtype`` or each leaf's."""
    def fill(x):
        if isinstance(fill_value, torch.Tensor):
            return fill_value.to(dtype=dtype or x.dtype, device=x.device).expand(x.shape).clone()
        return torch.full_like(x, fill_value, dtype=dtype)

    return _tree.map(fill, tree)


def clip(tree: Any, min_value: float | torch.Tensor | None = None,
         max_value: float | torch.Tensor | None = None) -> Any:
    """Every element clamped to ``[min_value, max_value]`` (``None``: no bound on that side)."""
    if min_value is None and max_value is None:
        return tree
    return _tree.map(lambda x: torch.clamp(x, min_value, max_value), tree)


def where(condition: bool | torch.Tensor, a: Any, b: Any) -> Any:
    """``torch.where(condition, a, b)`` leaf-wise: ``a``'s leaves where ``condition`` holds."""
    return _tree.map(lambda x, y: torch.where(torch.as_tensor(condition, device=x.device), x, y),
                     a, b)


def batch_shape(tree: Any, shape: tuple[int, ...] = ()) -> Any:
    """Every leaf broadcast (a view, no copy) to leading batch dimensions ``shape``."""
    return _tree.map(lambda x: x.expand(*shape, *x.shape), tree)


def cast_like(tree: Any, other: Any) -> Any:
    """Every leaf of ``tree`` cast to the dtype of the matching leaf of ``other``."""
    return _tree.map(lambda x, o: x if o is None else x.to(o.dtype), tree, other)


# -- reductions ----------------------------------------------------------------------------------


def _present(tree: Any) -> list:
    return [x for x in _tree.leaves(tree) if x is not None]


def _leaf_vdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _tree.layout(a) is None:
        return torch.vdot(a.reshape(-1), b.reshape(-1))
    return (torch.conj(a) * b).sum() if a.is_complex() else (a * b).sum()


def vdot(a: Any, b: Any) -> torch.Tensor:
    r"""The inner product :math:`\sum_i \langle a_i, b_i\rangle = \sum_i \bar a_i^\top b_i`
    of two trees (``a`` conjugated, as :func:`torch.vdot`); 0 for trees without tensors."""
    spec = _tree.structure(a)
    pairs = [(x, y) for x, y in zip(_tree.leaves(a), _tree.flatten_like(b, spec, "b", "a"))
             if x is not None]
    if not pairs:
        return torch.zeros(())
    xs, ys = zip(*pairs)
    return _tree.reduce_by_mesh(list(xs), _leaf_vdot, torch.sum, list(ys))


def sum(tree: Any) -> torch.Tensor:  # noqa: A001 - optax.tree.sum
    """The sum of every element of every leaf (0 for a tree without tensors)."""
    xs = _present(tree)
    if not xs:
        return torch.zeros(())
    return _tree.reduce_by_mesh(xs, torch.sum, torch.sum)


def _extreme(tree: Any, op: Callable, empty: float) -> torch.Tensor:
    xs = [x for x in _present(tree) if x.numel() > 0]
    if not xs:
        return torch.tensor(empty)
    return _tree.reduce_by_mesh(xs, op, op)


def max(tree: Any) -> torch.Tensor:  # noqa: A001 - optax.tree.max
    """The largest element of the tree (``-inf`` for a tree without elements)."""
    return _extreme(tree, torch.amax, -math.inf)


def min(tree: Any) -> torch.Tensor:  # noqa: A001 - optax.tree.min
    """The smallest element of the tree (``inf`` for a tree without elements)."""
    return _extreme(tree, torch.amin, math.inf)


def norm(tree: Any, ord: int | float | str | None = None,  # noqa: A002 - optax's name
         squared: bool = False) -> torch.Tensor:
    r"""The vector norm of the whole tree as one vector.

    ``ord``: ``None`` or 2 (:math:`\sqrt{\sum |x|^2}`: :func:`~functional_optim.tree.global_norm`,
    whose gradient at zero is zero), 1 (:math:`\sum |x|`) or ``inf`` (``"inf"``,
    ``"infinity"``: :math:`\max |x|`). ``squared``: the norm squared (for ``ord=2`` the sum of
    squares itself, no square root taken).
    """
    if ord is None or ord == 2:
        if squared:
            return sum(_tree.map(abs_sq, tree))
        return _tree.global_norm(tree)
    if ord == 1:
        value = sum(_tree.map(torch.abs, tree))
    elif ord == math.inf or ord in ("inf", "infinity"):
        value = max(_tree.map(torch.abs, tree))
    else:
        raise ValueError(f"norm: unsupported ord {ord!r}; expected None, 1, 2 or inf")
    return value * value if squared else value


def allclose(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-8,
             equal_nan: bool = False) -> bool:
    """Whether every pair of leaves is :func:`torch.allclose` (a host decision: a Python
    bool)."""
    spec = _tree.structure(a)
    return all(x is None and y is None or x is not None and y is not None
               and bool(torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan))
               for x, y in zip(_tree.leaves(a), _tree.flatten_like(b, spec, "b", "a")))


def _lower(d1: torch.dtype, d2: torch.dtype) -> torch.dtype:
    promoted = torch.promote_types(d1, d2)
    if promoted not in (d1, d2):
        raise ValueError(f"dtype: {d1} and {d2} do not promote to one another")
    return d2 if promoted == d1 else d1


def dtype(tree: Any, mixed_dtype_handler: str | None = None) -> torch.dtype:
    """The dtype of the tree's leaves.

    ``mixed_dtype_handler``: ``None`` (all leaves must share one dtype, else a ``ValueError``
    naming the others), ``"promote"`` (:func:`torch.promote_types` of all),
    ``"highest"``/``"lowest"`` (the largest/smallest in the promotion order; a ``ValueError``
    when two dtypes do not promote to one of them). A tree without tensors has
    :func:`torch.get_default_dtype`.
    """
    named = [(n, x.dtype) for n, x in _tree.named_leaves(tree) if x is not None]
    if not named:
        return torch.get_default_dtype()
    dtypes = [d for _, d in named]
    if mixed_dtype_handler is None:
        others = [(n, d) for n, d in named if d != dtypes[0]]
        if others:
            raise ValueError(f"dtype: leaves of several dtypes ({dtypes[0]} first, then "
                             f"{others[:5]}); pass mixed_dtype_handler='promote', 'highest' "
                             "or 'lowest'")
        return dtypes[0]
    if mixed_dtype_handler not in ("promote", "highest", "lowest"):
        raise ValueError(f"dtype: mixed_dtype_handler must be None, 'promote', 'highest' or "
                         f"'lowest', got {mixed_dtype_handler!r}")
    out = dtypes[0]
    for d in dtypes[1:]:
        if mixed_dtype_handler == "promote":
            out = torch.promote_types(out, d)
        else:
            low = _lower(out, d)
            out = low if mixed_dtype_handler == "lowest" else (d if low == out else out)
    return out


# -- moments -------------------------------------------------------------------------------------


def bias_correction(moment: Any, decay: float | torch.Tensor, count: int | torch.Tensor
                    ) -> Any:
    r"""``moment`` divided by :math:`1 - \beta^t` (``decay`` :math:`\beta`, ``count`` :math:`t`);
    the correction is computed in float64 (:func:`~functional_optim._execute.scalar_dtype`)
    and the division in each leaf's dtype. Under ``torch.compile`` the correction is computed
    once per leaf, not once per vector of elements
    (:class:`~functional_optim._execute.scalars_once`)."""
    def corrected(m):
        dt = scalar_dtype(m)
        t = torch.as_tensor(count, device=m.device).to(dt)
        return m / (1 - torch.as_tensor(decay, dtype=dt, device=m.device) ** t).to(m.dtype)

    with scalars_once():
        return _tree.map(corrected, moment)


def update_moment(updates: Any, moments: Any, decay: float | torch.Tensor, order: int) -> Any:
    r"""The moving average :math:`\beta m + (1-\beta) g^{k}` of the ``order``-th power
    (``None`` updates give ``None``)."""
    return optree.tree_map(lambda g, m: None if g is None else
                           (1 - decay) * g ** order + decay * m, updates, moments, **_NONE)


def update_moment_per_elem_norm(updates: Any, moments: Any, decay: float | torch.Tensor,
                                order: int) -> Any:
    r"""The moving average :math:`\beta m + (1-\beta) |g|^{k}` of the ``order``-th power of each
    element's modulus (real leaves: :math:`g^k`)."""
    def power(g):
        if not g.is_complex():
            return g ** order
        half = order / 2
        return abs_sq(g) ** (int(half) if half.is_integer() else half)

    return optree.tree_map(lambda g, m: None if g is None else
                           (1 - decay) * power(g) + decay * m, updates, moments, **_NONE)


def update_infinity_moment(updates: Any, moments: Any, decay: float | torch.Tensor,
                           eps: float | torch.Tensor) -> Any:
    r"""The infinity-norm moment :math:`\max(|g| + \epsilon, \beta m)` (Adamax's)."""
    return optree.tree_map(lambda g, m: None if g is None else
                           torch.maximum(torch.abs(g) + eps, decay * m), updates, moments,
                           **_NONE)


# -- random trees --------------------------------------------------------------------------------


def split_generator_like(generator: torch.Generator, tree: Any) -> Any:
    """One new :class:`torch.Generator` per leaf of ``tree`` (on the leaf's device), seeded by
    draws from ``generator``: reproducible from ``generator``'s state, independent streams
    (optax's ``split_key_like``). ``None`` leaves stay ``None``. A host utility."""
    leaves = _tree.leaves(tree)
    n = builtins.sum(x is not None for x in leaves)
    seeds = iter(torch.randint(0, 2**62, (n,), generator=generator,
                               device=generator.device).tolist())

    def one(x):
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(next(seeds))

    return optree.tree_map(lambda x: None if x is None else one(x), tree, **_NONE)


def random_like(generator: torch.Generator, tree: Any, sampler: Callable[..., torch.Tensor]
                = torch.randn, dtype: torch.dtype | None = None) -> Any:
    """A tree shaped like ``tree`` of random tensors: leaf ``i`` is
    ``sampler(shape, generator=g_i, dtype=dtype or its dtype, device=its device)`` with ``g_i``
    from :func:`split_generator_like` (``sampler``: :func:`torch.randn` by default,
    :func:`torch.rand`, or any function of that signature)."""
    keys = split_generator_like(generator, tree)
    return _tree.map(lambda x, g: sampler(x.shape, generator=g, dtype=dtype or x.dtype,
                                          device=x.device), tree, keys)


# -- keyed lookups in states ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """A path entry: the field ``name`` of a NamedTuple of class ``tuple_name``
    (``str``: ``"ScaleByAdamState.mu"``), so that a filter can tell apart equal field names of
    different states."""

    tuple_name: str
    name: str

    def __str__(self) -> str:
        return f"{self.tuple_name}.{self.name}"


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _children(node: Any, path: tuple) -> list[tuple[Any, tuple, Any]]:
    """``(key, path, child)`` of a NamedTuple, dict, list or tuple node; ``[]`` for a leaf."""
    if _is_named_tuple(node):
        name = type(node).__name__
        return [(f, (*path, NamedTupleKey(name, f)), getattr(node, f)) for f in node._fields]
    if isinstance(node, Mapping):
        return [(k, (*path, k), v) for k, v in node.items()]
    if isinstance(node, (list, tuple)):
        return [(i, (*path, i), v) for i, v in enumerate(node)]
    return []


def get_all_with_path(tree: Any, key: Any, filtering: Callable[[tuple, Any], bool] | None = None
                      ) -> list[tuple[tuple, Any]]:
    """Every ``(path, value)`` of ``tree`` whose key is ``key``: a dict key, a NamedTuple field
    name, or a NamedTuple class name (the value is then the NamedTuple itself), at any depth.

    A path is a tuple of dict keys, sequence indices and :class:`NamedTupleKey` entries.
    ``filtering(path, value) -> bool`` keeps a subset of the matches.
    """
    found: list = []

    def walk(node, path):
        if _is_named_tuple(node) and type(node).__name__ == key:
            found.append((path, node))
        keyed = _is_named_tuple(node) or isinstance(node, Mapping)  # (not sequence indices)
        for k, child_path, child in _children(node, path):
            if keyed and k == key:
                found.append((child_path, child))
            walk(child, child_path)

    walk(tree, ())
    return [(p, v) for p, v in found if filtering is None or filtering(p, v)]


def get(tree: Any, key: Any, default: Any = None,
        filtering: Callable[[tuple, Any], bool] | None = None) -> Any:
    """The value of ``tree`` at ``key`` (see :func:`get_all_with_path`), ``default`` where there
    is none; a ``KeyError`` where there are several (narrow them with ``filtering``)."""
    found = get_all_with_path(tree, key, filtering)
    if len(found) > 1:
        raise KeyError(f"get: {len(found)} values for {key!r}, at "
                       f"{[tuple(map(str, p)) for p, _ in found][:5]}; pass a filtering function")
    return found[0][1] if found else default


def set(tree: Any, filtering: Callable[[tuple, Any], bool] | None = None,  # noqa: A001
        /, **values: Any) -> Any:
    """A copy of ``tree`` with the values at each key of ``values`` replaced (a dict key, a
    NamedTuple field or class name, at any depth; ``filtering(path, value)`` restricts which
    occurrences). A key found nowhere is a ``KeyError``."""
    for key in values:
        if not get_all_with_path(tree, key, filtering):
            raise KeyError(f"set: no value for {key!r} in the tree"
                           + (" that the filtering function accepts" if filtering else ""))

    def wanted(key, path, value):
        return isinstance(key, str) and key in values and (filtering is None
                                                            or filtering(path, value))

    def rebuild(node, path):
        if _is_named_tuple(node) and wanted(type(node).__name__, path, node):
            return values[type(node).__name__]
        children = _children(node, path)
        if not children:
            return node
        keyed = _is_named_tuple(node) or isinstance(node, Mapping)
        new = [values[k] if keyed and wanted(k, p, c) else rebuild(c, p)
               for k, p, c in children]
        if _is_named_tuple(node):
            return type(node)(*new)
        if isinstance(node, Mapping):
            return type(node)(zip(node.keys(), new)) if not isinstance(node, dict) \
                else dict(zip(node.keys(), new))
        return type(node)(new)

    return rebuild(tree, ())


class _ParamsPlaceholder(NamedTuple):
    """Stands for the parameter tree in :func:`map_params`: a node without leaves, which every
    ``init`` maps over to itself."""


def map_params(initable: Any, fn: Callable[..., Any], state: Any, /, *rest: Any,
               transform_non_params: Callable[[Any], Any] | None = None,
               is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """``fn`` applied leaf-wise to every part of ``state`` shaped like the parameters (a
    moment, a slow copy, ...), with the matching leaves of ``rest`` (trees shaped like the
    parameters: e.g. a sharding spec per parameter); the other parts of the state are
    ``transform_non_params(part)`` (or kept).

    ``initable``: the transform (or its ``init``); which parts are parameter-shaped is found by
    calling ``init`` on a placeholder parameter tree. ``is_leaf``: passed to the map over each
    parameter-shaped part (e.g. ``lambda x: isinstance(x, MaskedNode)`` with :func:`masked`).
    """
    init = initable.init if hasattr(initable, "init") else initable
    marked = init(_ParamsPlaceholder())

    def visit(mark, value):
        if isinstance(mark, _ParamsPlaceholder):
            return optree.tree_map(lambda x, *r: None if x is None else fn(x, *r), value, *rest,
                                   is_leaf=is_leaf, none_is_leaf=True)
        return value if transform_non_params is None else transform_non_params(value)

    return optree.tree_map(visit, marked, state,
                           is_leaf=lambda x: isinstance(x, _ParamsPlaceholder), **_NONE)

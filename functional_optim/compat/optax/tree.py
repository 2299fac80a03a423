"""``optax.tree`` (and its older name ``optax.tree_utils``) over :mod:`functional_optim.tree`
and :mod:`functional_optim.tree_math`.

optax's names and argument orders; where optax takes a JAX PRNG key, a
:class:`torch.Generator` stands in for it (``random_like``, ``split_key_like``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ... import tree as _tree
from ... import tree_math as _tm
from ...tree_math import (
    allclose,
    batch_shape,
    bias_correction,
    clip,
    conj,
    dtype,
    full_like,
    get,
    get_all_with_path,
    max,
    min,
    norm,
    ones_like,
    real,
    set,
    update_infinity_moment,
    update_moment,
    update_moment_per_elem_norm,
)
from ...tree_math import random_like as _random_like

__all__ = [
    "add",
    "add_scale",
    "allclose",
    "batch_shape",
    "bias_correction",
    "cast",
    "cast_like",
    "clip",
    "conj",
    "div",
    "dtype",
    "full_like",
    "get",
    "get_all_with_path",
    "map_params",
    "max",
    "min",
    "mul",
    "norm",
    "ones_like",
    "random_like",
    "real",
    "scale",
    "set",
    "size",
    "split_key_like",
    "sub",
    "sum",
    "unwrap_random_key_data",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "vdot",
    "where",
    "zeros_like",
]

zeros_like = _tree.zeros_like
size = _tree.num_elements


def sub(tree_x: Any, tree_y: Any) -> Any:
    """``tree_x - tree_y`` leaf-wise (:func:`functional_optim.tree.sub`)."""
    return _tree.sub(tree_x, tree_y)


def mul(tree_x: Any, tree_y: Any) -> Any:
    """``tree_x * tree_y`` leaf-wise (:func:`functional_optim.tree_math.mul`)."""
    return _tm.mul(tree_x, tree_y)


def div(tree_x: Any, tree_y: Any) -> Any:
    """``tree_x / tree_y`` leaf-wise (:func:`functional_optim.tree_math.div`)."""
    return _tm.div(tree_x, tree_y)


def vdot(tree_x: Any, tree_y: Any) -> torch.Tensor:
    """The inner product of two trees (:func:`functional_optim.tree_math.vdot`)."""
    return _tm.vdot(tree_x, tree_y)


def where(condition: Any, tree_x: Any, tree_y: Any) -> Any:
    """``tree_x`` where ``condition``, else ``tree_y``
    (:func:`functional_optim.tree_math.where`)."""
    return _tm.where(condition, tree_x, tree_y)


def sum(tree: Any, associative_reduction: bool = False) -> torch.Tensor:  # noqa: A001
    """The sum of every element (:func:`functional_optim.tree_math.sum`);
    ``associative_reduction`` is accepted for optax's signature (the reduction order is
    torch's)."""
    del associative_reduction
    return _tm.sum(tree)


def cast_like(tree: Any, other_tree: Any) -> Any:
    """``tree`` cast leaf-wise to ``other_tree``'s dtypes
    (:func:`functional_optim.tree_math.cast_like`)."""
    return _tm.cast_like(tree, other_tree)


def map_params(initable: Any, f: Any, state: Any, /, *rest: Any,
               transform_non_params: Any = None, is_leaf: Any = None) -> Any:
    """``f`` on every parameter-shaped part of ``state``
    (:func:`functional_optim.tree_math.map_params`)."""
    return _tm.map_params(initable, f, state, *rest,
                          transform_non_params=transform_non_params, is_leaf=is_leaf)


def split_key_like(rng_key: torch.Generator, target_tree: Any) -> Any:
    """One :class:`torch.Generator` per leaf of ``target_tree``, seeded from ``rng_key``
    (:func:`functional_optim.tree_math.split_generator_like`)."""
    return _tm.split_generator_like(rng_key, target_tree)


def add(tree_x: Any, tree_y: Any, *other_trees: Any) -> Any:
    """``tree_x + tree_y + ...`` leaf-wise (:func:`functional_optim.tree.add`)."""
    return functools.reduce(_tree.add, other_trees, _tree.add(tree_x, tree_y))


def add_scale(tree_x: Any, scalar: float | torch.Tensor, tree_y: Any) -> Any:
    """``tree_x + scalar * tree_y`` leaf-wise (:func:`functional_optim.tree.add` with
    ``alpha=scalar``)."""
    return _tree.add(tree_x, tree_y, alpha=scalar)


def scale(scalar: float | torch.Tensor, tree: Any) -> Any:
    """``scalar * tree`` leaf-wise (optax's argument order; :func:`functional_optim.tree.scale`)."""
    return _tree.scale(tree, scalar)


def cast(tree: Any, dtype: torch.dtype | None) -> Any:  # noqa: A002 - optax's name
    """Floating leaves cast to ``dtype`` (:func:`functional_optim.tree.cast`); ``None``: kept."""
    return _tree.cast(tree, dtype)


def random_like(rng_key: torch.Generator, target_tree: Any,
                sampler: Any = torch.randn, dtype: torch.dtype | None = None) -> Any:
    """A random tree shaped like ``target_tree``
    (:func:`functional_optim.tree_math.random_like`); ``rng_key`` is a :class:`torch.Generator`,
    ``sampler`` a torch sampler of ``torch.randn``'s signature."""
    return _random_like(rng_key, target_tree, sampler, dtype)


def unwrap_random_key_data(input_tree: Any) -> Any:
    """``input_tree`` unchanged: torch's generators are not typed key arrays, so there is
    nothing to unwrap (optax turns JAX's typed keys into their raw data)."""
    return input_tree

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
from ...tree_math import (
    allclose,
    batch_shape,
    bias_correction,
    cast_like,
    clip,
    conj,
    div,
    dtype,
    full_like,
    get,
    get_all_with_path,
    map_params,
    max,
    min,
    mul,
    norm,
    ones_like,
    real,
    set,
    sum,
    update_infinity_moment,
    update_moment,
    update_moment_per_elem_norm,
    vdot,
    where,
)
from ...tree_math import random_like as _random_like
from ...tree_math import split_generator_like as split_key_like

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

sub = _tree.sub
zeros_like = _tree.zeros_like
size = _tree.num_elements


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

"""optax's utilities with optax's parameter names, over the native functions
(:mod:`functional_optim.numerics`, :mod:`functional_optim.tree_math`,
:mod:`functional_optim.combinators`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import combinators as _C
from ... import numerics as _numerics
from ... import tree as _tree
from ... import tree_math as _tree_math
from ...base import Transform

__all__ = [
    "global_norm",
    "incremental_update",
    "periodic_update",
    "safe_norm",
    "scale_gradient",
    "snapshot",
    "stateless",
    "stateless_with_tree_map",
    "tree_map_params",
]


def global_norm(updates: Any) -> torch.Tensor:
    """The L2 norm of the whole tree (:func:`functional_optim.tree.global_norm`)."""
    return _tree.global_norm(updates)


def incremental_update(new_tensors: Any, old_tensors: Any,
                       step_size: float | torch.Tensor) -> Any:
    """``step_size * new + (1 - step_size) * old`` (:func:`functional_optim.incremental_update`)."""
    return _C.incremental_update(new_tensors, old_tensors, step_size)


def periodic_update(new_tensors: Any, old_tensors: Any, steps: torch.Tensor,
                    update_period: int) -> Any:
    """``new`` every ``update_period`` steps, else ``old``
    (:func:`functional_optim.periodic_update`)."""
    return _C.periodic_update(new_tensors, old_tensors, steps, update_period)


def safe_norm(x: torch.Tensor, min_norm: float | torch.Tensor, ord: Any = None,  # noqa: A002
              axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> torch.Tensor:
    """:math:`\\max(\\|x\\|, m)` with a zero gradient below ``min_norm``
    (:func:`functional_optim.numerics.safe_norm`; ``axis``/``keepdims`` are torch's
    ``dim``/``keepdim``)."""
    return _numerics.safe_norm(x, min_norm, ord, axis, keepdims)


def scale_gradient(inputs: Any, scale: float | torch.Tensor) -> Any:
    """``inputs`` unchanged forward, the gradient scaled by ``scale`` backward
    (:func:`functional_optim.numerics.scale_gradient`)."""
    return _numerics.scale_gradient(inputs, scale)


def snapshot(measure_name: str, measure: Callable[[Any], Any]) -> Transform:
    """Keeps ``measure(updates)`` in the state under ``measure_name``
    (:func:`functional_optim.snapshot`)."""
    return _C.snapshot(measure_name, measure)


def stateless(f: Callable[[Any, Any], Any]) -> Transform:
    """The transform ``u -> f(u, params)`` (:func:`functional_optim.stateless`)."""
    return _C.stateless(f)


def stateless_with_tree_map(f: Callable[[torch.Tensor, Any], torch.Tensor]) -> Transform:
    """The transform applying ``f(u, p)`` to each leaf
    (:func:`functional_optim.stateless_with_tree_map`)."""
    return _C.stateless_with_tree_map(f)


def tree_map_params(initable: Any, f: Callable[..., Any], state: Any, /, *rest: Any,
                    transform_non_params: Callable[[Any], Any] | None = None,
                    is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """``f`` on every parameter-shaped part of ``state``
    (:func:`functional_optim.tree_math.map_params`)."""
    return _tree_math.map_params(initable, f, state, *rest,
                                 transform_non_params=transform_non_params, is_leaf=is_leaf)

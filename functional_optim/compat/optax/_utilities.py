"""optax's utilities with optax's parameter names, over the native functions
(:mod:`functional_optim.numerics`, :mod:`functional_optim.tree_math`,
:mod:`functional_optim.combinators`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import combinators as _C
from ... import linear_algebra as _la
from ... import numerics as _numerics
from ... import tree as _tree
from ... import tree_math as _tree_math
from ...base import Transform
from ...microbatching import microbatch
from ...transforms import value_and_grad_from_state

nnls = _la.nnls
multi_normal = _la.multi_normal

__all__ = [
    "matrix_inverse_pth_root",
    "microbatch",
    "multi_normal",
    "nnls",
    "power_iteration",
    "value_and_grad_from_state",
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


def power_iteration(matrix: Any, *, v0: Any = None, num_iters: int = 100,
                    error_tolerance: float = 1e-6, precision: Any = None,
                    key: Any = None) -> tuple[torch.Tensor, Any]:
    """The dominant eigenvalue and eigenvector
    (:func:`functional_optim.linear_algebra.power_iteration`); ``key``: a
    :class:`torch.Generator` (or an integer seed) for the random start; ``precision`` (JAX's
    matmul precision) has no meaning here."""
    del precision
    generator = torch.Generator().manual_seed(key) if isinstance(key, int) else key
    return _la.power_iteration(matrix, v0=v0, num_iters=num_iters,
                               error_tolerance=error_tolerance, generator=generator)


def matrix_inverse_pth_root(matrix: torch.Tensor, p: int, num_iters: int = 100,
                            ridge_epsilon: float = 1e-6, error_tolerance: float = 1e-6,
                            precision: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:math:`A^{-1/p}` by coupled Newton iterations
    (:func:`functional_optim.linear_algebra.matrix_inverse_pth_root`); ``precision`` (JAX's
    matmul precision) has no meaning here."""
    del precision
    return _la.matrix_inverse_pth_root(matrix, p, num_iters, ridge_epsilon, error_tolerance)

r"""Euclidean projections of a tree onto convex sets (and spheres), as optax's
``optax.projections``.

Each function returns the point of the set nearest to its input,
:math:`\operatorname{proj}_C(x) = \arg\min_{y \in C} \lVert y - x\rVert_2`, with the whole tree
taken as one vector (a :math:`\lVert\cdot\rVert` or :math:`\langle\cdot,\cdot\rangle` sums over
every leaf). Used after an update, they give projected gradient descent::

    params = projections.projection_simplex(fo.apply_updates(params, updates))

All are pure and differentiable (a projection's gradient is its Jacobian, e.g. the simplex's
:math:`\operatorname{diag}(s) - ss^\top/|s|` on its support :math:`s`), trace under
``torch.func`` and ``torch.compile``, and take no host decision (branches are
:func:`torch.where`). Bounds and radii are numbers or 0-d tensors. ``None`` leaves stay
``None``. The simplex and L1 projections sort all elements together: they need the full vectors
(no DTensor leaves).
"""

from __future__ import annotations

from typing import Any

import torch

from . import tree as _tree
from . import tree_math as _tm

__all__ = [
    "projection_non_negative",
    "projection_box",
    "projection_hypercube",
    "projection_simplex",
    "projection_l1_sphere",
    "projection_l1_ball",
    "projection_l2_sphere",
    "projection_l2_ball",
    "projection_linf_ball",
    "projection_vector",
    "projection_hyperplane",
    "projection_halfspace",
]


def projection_non_negative(tree: Any) -> Any:
    r"""Onto the non-negative orthant: :math:`\max(x, 0)` elementwise."""
    return _tree.map(torch.relu, tree)


def _clamp(x: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
    """``torch.clamp`` with number or tensor bounds (a tensor bound in ``x``'s dtype; a number
    beside a tensor bound made a tensor)."""
    if not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor):
        return torch.clamp(x, lo, hi)
    lo, hi = (None if b is None else torch.as_tensor(b, dtype=x.dtype, device=x.device)
              for b in (lo, hi))
    return torch.clamp(x, lo, hi)


def projection_box(tree: Any, lower: Any, upper: Any) -> Any:
    r"""Onto the box :math:`\{y: l \le y \le u\}`: :math:`\min(\max(x, l), u)` elementwise.

    ``lower``/``upper``: numbers, 0-d tensors, or trees like ``tree`` (one bound per leaf or
    per element).
    """
    spec = _tree.structure(tree)
    flat = _tree.leaves(tree)

    def per_leaf(b):
        return _tree.leaves(b) if _tree.structure(b) == spec else [b] * len(flat)

    out = [None if x is None else _clamp(x, lo, hi)
           for x, lo, hi in zip(flat, per_leaf(lower), per_leaf(upper))]
    return spec.unflatten(out)


def projection_hypercube(tree: Any, scale: float | torch.Tensor = 1) -> Any:
    r"""Onto the hypercube :math:`[0, s]^n` (:func:`projection_box` with bounds 0 and ``scale``)."""
    return projection_box(tree, 0, scale)


def _flat(tree: Any) -> tuple[torch.Tensor, list, list]:
    """All elements as one vector (in the promoted dtype), the leaves and their positions."""
    leaves = _tree.leaves(tree)
    present = [x for x in leaves if x is not None]
    if any(_tree.layout(x) is not None for x in present):
        raise TypeError("projection_simplex/l1: the projection sorts all elements together; "
                        "DTensor leaves are not supported (gather them with full_tensor())")
    dtype = _tm.dtype(tree, "promote")
    return torch.cat([x.reshape(-1).to(dtype) for x in present]), leaves, present


def _unflat(tree: Any, vector: torch.Tensor, leaves: list, present: list) -> Any:
    pieces = iter(torch.split(vector, [x.numel() for x in present]))
    out = [None if x is None else next(pieces).reshape(x.shape).to(x.dtype) for x in leaves]
    return _tree.structure(tree).unflatten(out)


def _unit_simplex(v: torch.Tensor) -> torch.Tensor:
    """The unit simplex's projection of a vector (see :func:`projection_simplex`); no host
    sync: the index is gathered."""
    u = torch.sort(v, descending=True).values
    cumsum = torch.cumsum(u, 0)
    ind = torch.arange(1, v.shape[0] + 1, device=v.device, dtype=v.dtype)
    rho = (1 / ind + (u - cumsum / ind) > 0).sum()
    tau_sum = torch.gather(cumsum, 0, (rho - 1).reshape(1)).reshape(())
    return torch.relu(1 / rho.to(v.dtype) + (v - tau_sum / rho.to(v.dtype)))


def projection_simplex(tree: Any, scale: float | torch.Tensor = 1) -> Any:
    r"""Onto the simplex :math:`\{y \ge 0, \sum y = s\}` (all leaves together; ``scale``
    :math:`s > 0`): :math:`s\,\operatorname{proj}_{\Delta}(x/s)`, :math:`\Delta` the unit
    simplex.

    :math:`\operatorname{proj}_{\Delta}(v) = \max(v - \tau, 0)`, where
    :math:`\tau = (\sum_{i \le \rho} u_i - 1)/\rho` over the values sorted in decreasing order
    :math:`u` and :math:`\rho` counts the :math:`j` with :math:`u_j > (\sum_{i \le j} u_i - 1)/j`
    (Held et al., 1974; Duchi et al., 2008).
    """
    if _tree.num_leaves(tree) == 0:
        return tree
    v, leaves, present = _flat(tree)
    return _unflat(tree, scale * _unit_simplex(v / scale), leaves, present)


def projection_l1_sphere(tree: Any, scale: float | torch.Tensor = 1) -> Any:
    r"""Onto the L1 sphere :math:`\{y: \lVert y\rVert_1 = s\}`:
    :math:`\operatorname{sign}(x) \odot \operatorname{proj}_{s\Delta}(|x|)`."""
    magnitude = projection_simplex(_tree.map(torch.abs, tree), scale)
    return _tm.mul(_tree.map(torch.sign, tree), magnitude)


def projection_l1_ball(tree: Any, scale: float | torch.Tensor = 1) -> Any:
    r"""Onto the L1 ball :math:`\{y: \lVert y\rVert_1 \le s\}`: ``tree`` itself inside, else
    :func:`projection_l1_sphere`."""
    if _tree.num_leaves(tree) == 0:
        return tree
    inside = _tm.norm(tree, ord=1) <= scale
    return _tm.where(inside, tree, projection_l1_sphere(tree, scale))


def projection_l2_sphere(tree: Any, scale: float | torch.Tensor = 1) -> Any:
    r"""Onto the L2 sphere :math:`\{y: \lVert y\rVert_2 = s\}`: :math:`s\,x/\lVert x\rVert_2`."""
    factor = scale / _tm.norm(tree)
    return _tree.map(lambda x: factor.to(x.dtype) * x, tree)


def projection_l2_ball(tree: Any, scale: float | torch.Tensor = 1) -> Any:
    r"""Onto the L2 ball :math:`\{y: \lVert y\rVert_2 \le s\}`:
    :math:`x\,s/\max(\lVert x\rVert_2, s)` (computed as
    :math:`s/\sqrt{\max(\lVert x\rVert^2, s^2)}`, differentiable at 0)."""
    squared = _tm.norm(tree, squared=True)
    factor = scale / torch.sqrt(torch.clamp(squared, min=scale * scale))
    return _tree.map(lambda x: factor.to(x.dtype) * x, tree)


def projection_linf_ball(tree: Any, scale: float | torch.Tensor = 1) -> Any:
    r"""Onto the L-infinity ball :math:`\{y: \lVert y\rVert_\infty \le s\}`: every element
    clamped to :math:`[-s, s]`."""
    return projection_box(tree, -scale, scale)


def projection_vector(x: Any, a: Any) -> Any:
    r"""Onto the line spanned by ``a``: :math:`\frac{\langle x, a\rangle}{\langle a, a\rangle} a`
    (:math:`\langle x, a\rangle` = :func:`~functional_optim.tree_math.vdot`, ``x``
    conjugated)."""
    coef = _tm.vdot(x, a) / _tm.vdot(a, a)
    return _tree.map(lambda y: coef.to(y.dtype) * y, a)


def _hyperplane_coef(x: Any, a: Any, b: float | torch.Tensor) -> torch.Tensor:
    return (b - _tm.vdot(x, a)) / _tm.vdot(a, a)


def projection_hyperplane(x: Any, a: Any, b: float | torch.Tensor) -> Any:
    r"""Onto the hyperplane :math:`\{y: \langle a, y\rangle = b\}`:
    :math:`x + \frac{b - \langle x, a\rangle}{\langle a, a\rangle} a`."""
    coef = _hyperplane_coef(x, a, b)
    return _tree.add(x, a, coef)


def projection_halfspace(x: Any, a: Any, b: float | torch.Tensor) -> Any:
    r"""Onto the half-space :math:`\{y: \langle a, y\rangle \le b\}`:
    :math:`x + \min\left(0, \frac{b - \langle x, a\rangle}{\langle a, a\rangle}\right) a`."""
    coef = torch.clamp(_hyperplane_coef(x, a, b), max=0)
    return _tree.add(x, a, coef)

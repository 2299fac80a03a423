r"""Low-rank gradient projection: GaLore (Zhao et al., 2024, *GaLore: Memory-Efficient LLM
Training by Gradient Low-Rank Projection*).

A matrix-shaped gradient :math:`G \in \mathbb{R}^{m \times n}` is projected on the span of its
top ``rank`` singular vectors (left ones when :math:`m \ge n`, right ones otherwise), an inner
optimizer runs on the small projected gradient (so its state is small), and its update is
projected back. The projector is refreshed from the current gradient's SVD every
``update_proj_gap`` updates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import _execute
from .. import tree as _tree
from .._execute import first_device
from ..base import (
    HParamError,
    Transform,
    _check_transform,
    check_hparam,
    check_state,
    resolve_hparams,
)
from ._refresh import check_interval, refreshed

__all__ = ["GaLoreDimensionNumbers", "ScaleByGaloreState", "scale_by_galore"]


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a tensor form GaLore's matrix: the ``reduction_axis`` (rows, the input
    dimension) and the ``output_axis`` (columns), each an int or a sequence of ints (their
    sizes multiply); together they must name every axis. E.g. an attention projection stored
    as ``(embed, heads, head_dim)``: ``GaLoreDimensionNumbers(0, (1, 2))``."""

    reduction_axis: int | tuple[int, ...] = 0
    output_axis: int | tuple[int, ...] = 1


class _Matrix(NamedTuple):
    """How one leaf is viewed as an ``(m, n)`` matrix, and its projector's side."""

    order: tuple[int, ...]
    shape: tuple[int, int]
    left: bool  # m >= n: project on left singular vectors, P (m, r), P^T G
    rank: int

    def of(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.order).reshape(self.shape)

    def back(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        sizes = [like.shape[a] for a in self.order]
        inverse = sorted(range(len(self.order)), key=lambda i: self.order[i])
        return y.reshape(sizes).permute(inverse)

    def projector_shape(self) -> tuple[int, int]:
        m, n = self.shape
        return (m, self.rank) if self.left else (n, self.rank)

    def small_shape(self) -> tuple[int, int]:
        m, n = self.shape
        return (self.rank, n) if self.left else (m, self.rank)


def _axes(value: Any, ndim: int) -> tuple[int, ...]:
    return tuple(a % ndim for a in ((value,) if isinstance(value, int) else value))


def _matrix(tree: Any, i: int, x: torch.Tensor, dims: GaLoreDimensionNumbers,
            rank: int) -> _Matrix:
    """Leaf ``i`` of ``tree``, ``x``, as GaLore's matrix (its name is read for errors only)."""
    if x.ndim < 2:
        raise ValueError(f"scale_by_galore: leaf {_tree.leaf_label(tree, i)} has shape "
                         f"{tuple(x.shape)}: GaLore projects tensors of rank >= 2")
    rows, cols = _axes(dims.reduction_axis, x.ndim), _axes(dims.output_axis, x.ndim)
    if set(rows) & set(cols) or len(set(rows) | set(cols)) != x.ndim:
        raise ValueError(f"scale_by_galore: leaf {_tree.leaf_label(tree, i)} of shape "
                         f"{tuple(x.shape)}: the reduction axes {rows} and output axes {cols} "
                         "must be disjoint and name every axis")
    m = n = 1
    for a in rows:
        m *= x.shape[a]
    for a in cols:
        n *= x.shape[a]
    return _Matrix(rows + cols, (m, n), m >= n, min(rank, m, n))


def _plan(owner_dims: Any, tree: Any, rank: int) -> list:
    """Per leaf of ``tree`` (flattened), its :class:`_Matrix` or ``None`` (not projected)."""
    flat = _tree.leaves(tree)
    if owner_dims is None:
        dims = [GaLoreDimensionNumbers() if x is not None and x.ndim == 2 else None
                for x in flat]
    elif isinstance(owner_dims, GaLoreDimensionNumbers):
        dims = [owner_dims if x is not None and x.ndim >= 2 else None for x in flat]
    else:
        given = owner_dims(tree) if callable(owner_dims) else owner_dims
        dims = _tree.flatten_like(given, _tree.structure(tree),
                                  "scale_by_galore weight_dimension_numbers", "params")
    return [None if d is None or x is None else _matrix(tree, i, x, d, rank)
            for i, (x, d) in enumerate(zip(flat, dims))]


def _canonical_signs(p: torch.Tensor) -> torch.Tensor:
    """``p`` with each column's sign chosen so that its entry of largest magnitude (the first
    such) is positive: singular vectors are defined up to sign, and LAPACK, cuSOLVER and other
    libraries return different ones."""
    top = torch.gather(p, 0, p.abs().argmax(0, keepdim=True))
    return p * torch.where(top < 0, -1.0, 1.0).to(p.dtype)


class ScaleByGaloreState(NamedTuple):
    """State of :func:`scale_by_galore`.

    Attributes:
        count: updates so far (0-d int64); the projectors are refreshed when it is a multiple
            of ``update_proj_gap``.
        inner: the inner optimizer's state, on the projected shapes (the full shape for a leaf
            that is not projected).
        projector: per leaf its projector, ``(m, r)`` or ``(n, r)`` (``(0, 0)`` for a leaf that
            is not projected).
    """

    count: Any
    inner: Any
    projector: Any


def scale_by_galore(rank: int = 128, update_proj_gap: int = 200, scale: float = 1.0,
                    base_optimizer: Transform | None = None,
                    weight_dimension_numbers: Any = None, *,
                    svd_dtype: torch.dtype | None = torch.float32,
                    host_refresh: bool = False) -> Transform:
    r"""GaLore (Zhao et al., 2024), as optax's ``contrib.scale_by_galore`` computes it.

    For a projected leaf, viewed as :math:`G \in \mathbb{R}^{m\times n}` and
    :math:`r = \min(\text{rank}, m, n)`:

    .. math::
        P = U_{:, :r}\ (m \ge n) \text{ or } V_{:, :r} \text{ of }
        G = U \Sigma V^\top \text{ when } t \bmod T = 0, \text{ else the previous } P, \\
        R = P^\top G \text{ or } G P, \qquad
        u = s \cdot (P\, \mathrm{inner}(R) \text{ or } \mathrm{inner}(R)\, P^\top)

    with :math:`t` the update's count (from 0) and :math:`T` = ``update_proj_gap``; other
    leaves go through the inner optimizer unprojected. The inner optimizer (default
    :func:`~functional_optim.scale_by_adam`) must not read the parameters (it runs on
    projected shapes); weight decay and the learning rate are separate blocks
    (:func:`functional_optim.galore_adamw`).

    *The SVD* runs in ``svd_dtype`` (float32, as optax and the authors' code, whatever the
    parameters' dtype; ``None``: the parameters' dtype, float32 for half-precision ones, which
    ``torch.linalg.svd`` does not take), and the projector is cast back to the
    leaf's dtype. Singular vectors are defined up to sign; each column of a projector is taken
    with its largest entry positive, so the trajectory does not depend on the library that
    computed the SVD (optax takes the raw output, so the two agree up to these signs after
    a refresh). The projector is a choice of basis, not differentiated: meta-gradients flow
    through the projections and the inner optimizer, not through the SVD (as the authors'
    code, which projects ``.data``; optax differentiates the SVD, whose derivative is
    undefined where singular values repeat, e.g. at a zero gradient).

    *The refresh*: ``host_refresh=False`` (default) computes the SVD at every
    update and keeps it at refresh steps by :func:`torch.where` (no host sync: ``vmap``,
    ``torch.func.grad``, ``torch.compile`` apply; an SVD per matrix per update);
    ``host_refresh=True`` reads the count on the host and computes the SVD only at refresh
    steps (one sync per update; the same numbers), for eager training. Either way the update
    is not CUDA-graph capturable: ``torch.linalg.svd`` synchronizes a CUDA device with the host.
    Real parameters only.

    Args:
        rank: the projection's rank (structural int >= 1; default 128).
        update_proj_gap: ``T`` (structural; default 200).
        scale: ``s`` (default 1).
        base_optimizer: the inner optimizer (structural; default ``scale_by_adam()``).
        weight_dimension_numbers: which leaves are matrices (structural): ``None`` (the 2-D
            ones), a :class:`GaLoreDimensionNumbers` for every leaf of rank >= 2, or a tree
            of them (``None`` where not projected), or a function ``params -> tree``.
        svd_dtype: the SVD's precision (structural; see above).
        host_refresh: decide the refresh on the host (structural; see above).
    """
    owner = "scale_by_galore"
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise HParamError(f"{owner}: rank must be an int >= 1, got {rank!r}")
    check_interval(owner, "update_proj_gap", update_proj_gap)
    check_hparam(owner, "scale", scale)
    if svd_dtype is not None and not (isinstance(svd_dtype, torch.dtype)
                                      and svd_dtype.is_floating_point):
        raise HParamError(f"{owner}: svd_dtype must be None or a floating dtype, got "
                          f"{svd_dtype!r}")
    if base_optimizer is None:
        from .moments import scale_by_adam
        base_optimizer = scale_by_adam()
    _check_transform(base_optimizer, f"{owner}: base_optimizer")
    dims = weight_dimension_numbers
    defaults = {"scale": scale, "base_optimizer": base_optimizer.hparams}

    def init(params):
        plan = _plan(dims, params, rank)
        spec, flat = _tree.structure(params), _tree.leaves(params)
        small = [p if mat is None else p.new_zeros(mat.small_shape())
                 for p, mat in zip(flat, plan)]
        projectors = [None if p is None else p.new_zeros((0, 0) if mat is None
                                                         else mat.projector_shape())
                      for p, mat in zip(flat, plan)]
        return ScaleByGaloreState(
            torch.zeros((), dtype=torch.int64, device=first_device(params)),
            base_optimizer.init(spec.unflatten(small)), spec.unflatten(projectors))

    def svd_projector(g2: torch.Tensor, mat: _Matrix) -> torch.Tensor:
        x = g2.detach().to(svd_dtype or torch.promote_types(g2.dtype, torch.float32))
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        return _canonical_signs(u[:, :mat.rank] if mat.left else vh[:mat.rank, :].T).to(
            g2.dtype)

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByGaloreState)
        spec = _tree.structure(updates)
        flat = _tree.leaves(updates)
        for i, g in enumerate(flat):
            if g is not None and g.is_complex():
                raise TypeError(f"{owner} does not support complex updates (leaf "
                                f"{_tree.leaf_label(updates, i)}, dtype {g.dtype})")
        plan = _plan(dims, updates, rank)
        old = _tree.flatten_like(state.projector, spec, f"{owner} state", "updates")
        matrices = [None if mat is None else mat.of(g) for g, mat in zip(flat, plan)]

        def fresh():
            return [p if mat is None else svd_projector(g2, mat)
                    for p, g2, mat in zip(old, matrices, plan)]

        projectors = refreshed(state.count, update_proj_gap, host_refresh, fresh, old)
        small = [g if mat is None else (p.T @ g2 if mat.left else g2 @ p)
                 for g, g2, p, mat in zip(flat, matrices, projectors, plan)]
        inner_u, inner = base_optimizer.update(spec.unflatten(small), state.inner, None,
                                               h["base_optimizer"], **extra)
        inner_flat = _tree.flatten_like(inner_u, spec, f"{owner} base_optimizer updates",
                                        "updates")
        out = []
        for g, u, p, mat in zip(flat, inner_flat, projectors, plan):
            if g is None or mat is None:
                out.append(u)
                continue
            out.append(h["scale"] * mat.back(p @ u if mat.left else u @ p.T, g))
        return spec.unflatten(out), ScaleByGaloreState(state.count + 1, inner,
                                                       spec.unflatten(projectors))

    return Transform(init, _execute.owning(update, [base_optimizer]), defaults)


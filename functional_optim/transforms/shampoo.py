r"""Shampoo (Gupta, Koren & Singer, 2018, *Shampoo: Preconditioned Stochastic Tensor
Optimization*) with the practical parts of its scalable version (Anil et al., 2020, *Scalable
Second Order Optimization for Deep Learning*): merged small dimensions, blocking of large ones,
preconditioners recomputed every ``precondition_frequency`` updates from
``start_preconditioning_step`` on, and the step's norm grafted from AdaGrad or Adam.

A leaf :math:`G` of (merged) rank :math:`r` is cut into blocks; each block keeps per axis
:math:`k` a statistic :math:`L_k` (the Gram matrix of the gradients along that axis) and its
inverse :math:`2r`-th root :math:`P_k = (L_k + \epsilon I)^{-1/2r}`, and is preconditioned as
:math:`G \times_1 P_1 \cdots \times_r P_r` (:math:`P_L G P_R` for a matrix).
"""

from __future__ import annotations

from numbers import Number
from typing import Any, NamedTuple

import torch

from .. import _execute
from .. import tree as _tree
from .._execute import first_device, safe_sqrt
from ..base import HParamError, Transform, check_hparam, check_state, resolve_hparams
from ._kronecker import (
    axis_covariance,
    check_dim,
    check_dtype,
    check_factors,
    check_like,
    check_real,
    decomposition_dtype,
    merged_shape,
    per_leaf,
)
from ._refresh import check_interval

__all__ = ["ScaleByShampooState", "scale_by_shampoo", "GRAFTS"]

GRAFTS = ("none", "sgd", "adagrad", "adam")
"""The grafting choices: the step's norm taken from none (Shampoo's own), SGD (the gradient's),
AdaGrad's or Adam's (without momentum: the momentum block follows)."""


class ScaleByShampooState(NamedTuple):
    """State of :func:`scale_by_shampoo`.

    Attributes:
        count: updates so far (0-d int64).
        graft: the grafting method's second moment (shaped like the parameters; ``(0,)`` for
            ``"none"`` and ``"sgd"``).
        statistics: per leaf a tuple, per block and axis (block-major) its :math:`L_k`.
        preconditioners: per leaf a tuple, alike, its :math:`P_k` (identity at ``init``).
    """

    count: Any
    graft: Any
    statistics: Any
    preconditioners: Any


class _Blocks(NamedTuple):
    """A leaf viewed with ``shape`` (rank >= 2: preconditioned) and cut along each axis into
    pieces of ``sizes[k]``."""

    shape: tuple
    sizes: tuple

    @property
    def rank(self) -> int:
        return len(self.shape)

    def factor_sizes(self) -> list:
        """Per block (in the order of :meth:`split`) and axis, the factor's size."""
        out = [[]]
        for sizes in self.sizes:
            out = [prefix + [s] for prefix in out for s in sizes]
        return [s for block in out for s in block]

    def split(self, x: torch.Tensor) -> list:
        pieces = [x]
        for axis, sizes in enumerate(self.sizes):
            pieces = [q for p in pieces for q in torch.split(p, list(sizes), dim=axis)]
        return pieces

    def merge(self, pieces: list) -> torch.Tensor:
        for axis in reversed(range(self.rank)):
            n = len(self.sizes[axis])
            pieces = [torch.cat(pieces[i:i + n], dim=axis) for i in range(0, len(pieces), n)]
        return pieces[0]


def _blocks(shape: tuple, block_size: int, merge: bool) -> _Blocks | None:
    """How a leaf of ``shape`` is preconditioned, or ``None`` (rank <= 1 once merged)."""
    view = merged_shape(shape, block_size) if merge else tuple(shape)
    if len(view) <= 1:
        return None
    sizes = tuple(tuple([block_size] * (d // block_size) + ([d % block_size] if d % block_size
                                                             else [])) for d in view)
    return _Blocks(view, sizes)


def _inverse_root(stat: torch.Tensor, old: torch.Tensor, p: int, eps: Any,
                  dtype: torch.dtype) -> torch.Tensor:
    r""":math:`(L + \epsilon I)^{-1/p}` by the eigendecomposition of :math:`L` in ``dtype``
    (its eigenvalues clipped at 0), cast back to ``L``'s dtype; ``old`` where ``L`` or the root
    has a non-finite entry (the identity is decomposed instead of a non-finite ``L``, which
    ``torch.linalg.eigh`` refuses)."""
    a = stat.detach().to(dtype)
    finite = torch.isfinite(a).all()
    a = torch.where(finite, a, torch.eye(a.shape[0], dtype=dtype, device=a.device))
    lam, v = torch.linalg.eigh(a)
    scale = (torch.clamp(lam, min=0.0) + eps) ** (-1.0 / p)
    root = ((v * scale.to(dtype)) @ v.T).to(stat.dtype)
    return torch.where(finite & torch.isfinite(root).all(), root, old)


def _newton_root(stat: torch.Tensor, old: torch.Tensor, p: int, eps: Any, dtype: torch.dtype,
                 iterations: int) -> torch.Tensor:
    r""":math:`(L + \epsilon I)^{-1/p}` by ``iterations`` steps of the coupled Newton iteration
    (Guo & Higham, 2006; Anil et al.'s ``ComputePower``) in ``dtype``: from
    :math:`X = z^{1/p} I`, :math:`M = z A`, :math:`z = (1 + p) / (2 \lVert A \rVert_F)`,
    :math:`T = ((p + 1) I - M) / p`, :math:`X \leftarrow X T`, :math:`M \leftarrow T^p M`
    (:math:`M \to I`, :math:`X \to A^{-1/p}`); as there, the iteration stops (a tensor select)
    once :math:`\max |M - I|` grows by more than a factor 1.2. Matrix products only: capturable
    and differentiable. ``old`` where ``L`` or the root has a non-finite entry."""
    a = stat.to(dtype)
    eye = torch.eye(a.shape[0], dtype=dtype, device=a.device)
    a = a + eps * eye
    z = (1 + p) / (2 * torch.linalg.matrix_norm(a))
    x = eye * z ** (1.0 / p)
    m = a * z
    error = (m - eye).abs().amax()
    alive = torch.isfinite(error)
    for _ in range(iterations):
        t = ((p + 1) * eye - m) / p
        x_next, m_next = x @ t, torch.linalg.matrix_power(t, p) @ m
        error_next = (m_next - eye).abs().amax()
        alive = alive & (error_next <= 1.2 * error)
        x = torch.where(alive, x_next, x)
        m = torch.where(alive, m_next, m)
        error = torch.where(alive, error_next, error)
    root = x.to(stat.dtype)
    return torch.where(torch.isfinite(stat).all() & torch.isfinite(root).all(), root, old)


_ROOT_METHODS = ("eigh", "newton")


def scale_by_shampoo(beta2: float = 1.0, eps: float = 1e-12, graft_beta2: float = 0.999,
                     graft_eps: float = 1e-8, *, block_size: int = 128,
                     precondition_frequency: int = 1, start_preconditioning_step: int = 1,
                     inverse_exponent: int | None = None, merge_small_dims: bool = True,
                     graft: str = "adagrad", root_dtype: torch.dtype | None = torch.float64,
                     root_method: str = "eigh", root_iterations: int = 50,
                     host_refresh: bool = False) -> Transform:
    r"""Shampoo's grafted direction (Gupta et al., 2018; Anil et al., 2020), without momentum,
    weight decay and learning rate (:func:`functional_optim.shampoo` adds them).

    At update :math:`t = 1, 2, \ldots`, per leaf (viewed with its small consecutive axes merged
    while their product is at most ``block_size``, with ``merge_small_dims``) and per block
    (each axis cut into pieces of ``block_size``) and axis :math:`k`:

    .. math::
        L_k \leftarrow \beta_2 L_k + w\, G^{(k)} G^{(k)\top}, \qquad
        w = 1 \text{ if } \beta_2 = 1 \text{ (sums, AdaGrad-like) else } 1 - \beta_2,

    and when :math:`t \bmod f = 0` (``precondition_frequency``) :math:`P_k \leftarrow
    (L_k + \epsilon I)^{-1/p}`, :math:`p = 2r` (``inverse_exponent`` overrides it), computed in
    ``root_dtype`` by an eigendecomposition (``root_method="eigh"``, eigenvalues clipped at 0)
    or by ``root_iterations`` coupled Newton steps (``"newton"``: matrix products only).
    *Fallback*: where the statistic or its root has a non-finite entry, the root is dropped
    and the previous :math:`P_k` kept (a tensor select; an ``eigh`` that does not converge on a
    finite matrix raises, as torch's).
    The direction:

    .. math::
        S = G \times_1 P_1 \cdots \times_r P_r \text{ (per block)}, \qquad
        u = \begin{cases} S\, \lVert D \rVert / (\lVert S \rVert + 10^{-16}) &
        t \ge t_0 \\ D & t < t_0 \end{cases}

    with :math:`t_0` = ``start_preconditioning_step`` and :math:`D` the grafting method's
    direction: ``"adagrad"`` :math:`D = G / (\sqrt{\textstyle\sum G^2} + \epsilon_g)`,
    ``"adam"`` :math:`D = G / (\sqrt{v / (1 - \beta_{2g}^t)} + \epsilon_g)` with
    :math:`v \leftarrow \beta_{2g} v + (1 - \beta_{2g}) G^2`, ``"sgd"`` :math:`D = G`,
    ``"none"``: :math:`u = S` (no rescaling; :math:`G` before :math:`t_0`). Norms are per leaf.
    A leaf of rank <= 1 once merged (a scalar, a vector) has no factors: :math:`S = G`
    (the gradient's direction with the grafting method's norm, as the authors').

    *Derivatives*: with ``"eigh"`` the eigenvectors are not differentiated (their derivative is
    undefined where eigenvalues repeat); meta-gradients flow through the eigenvalues' ``eps``,
    the blocks and the grafting. ``"newton"`` is differentiated throughout. *The refresh*:
    ``host_refresh=False`` (default) computes the roots at every update and keeps them where
    due by :func:`torch.where` (``vmap``, ``torch.func.grad``, ``torch.compile`` apply; with
    ``"newton"`` the update is CUDA-graph capturable, while ``torch.linalg.eigh`` synchronizes
    a CUDA device with the host); ``host_refresh=True`` reads the count on the host and
    computes the roots only when due (eager training; the same numbers). Real parameters only.

    Args:
        beta2: ``β2``, the statistics' decay (default 1: sums).
        eps: ``ε`` added to the statistics' eigenvalues (default 1e-12).
        graft_beta2: Adam grafting's ``β2g`` (default 0.999).
        graft_eps: the grafting's ``ε_g`` (default 1e-8).
        block_size: the largest block (and merged size) (structural int; default 128).
        precondition_frequency: ``f`` (structural; default 1).
        start_preconditioning_step: ``t0`` (structural int >= 1; default 1).
        inverse_exponent: ``p`` for every factor (structural; default ``None``: 2r).
        merge_small_dims: merge small consecutive axes (structural; default True).
        graft: one of :data:`GRAFTS` (structural; default ``"adagrad"``).
        root_dtype: the roots' precision (structural; default float64; ``None``: the leaf's
            dtype, at least float32).
        root_method: ``"eigh"`` or ``"newton"`` (structural; see above).
        root_iterations: the Newton steps (structural int; default 50).
        host_refresh: decide the roots on the host (structural; see above).
    """
    owner = "scale_by_shampoo"
    check_hparam(owner, "beta2", beta2, ge=0, le=1)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "graft_beta2", graft_beta2, ge=0, lt=1)
    check_hparam(owner, "graft_eps", graft_eps, ge=0)
    check_dim(owner, "block_size", block_size)
    check_interval(owner, "precondition_frequency", precondition_frequency)
    check_dim(owner, "start_preconditioning_step", start_preconditioning_step)
    if inverse_exponent is not None:
        check_dim(owner, "inverse_exponent", inverse_exponent)
    if graft not in GRAFTS:
        raise HParamError(f"{owner}: graft must be one of {GRAFTS}, got {graft!r}")
    check_dtype(owner, "root_dtype", root_dtype)
    if root_method not in _ROOT_METHODS:
        raise HParamError(f"{owner}: root_method must be one of {_ROOT_METHODS}, got "
                          f"{root_method!r}")
    check_dim(owner, "root_iterations", root_iterations)
    defaults = {"beta2": beta2, "eps": eps, "graft_beta2": graft_beta2, "graft_eps": graft_eps}
    moment = graft in ("adagrad", "adam")

    def init(params):
        spec, flat = _tree.structure(params), _tree.leaves(params)
        stats, roots = [], []
        for p in flat:
            plan = None if p is None else _blocks(tuple(p.shape), block_size, merge_small_dims)
            sizes = [] if plan is None else plan.factor_sizes()
            stats.append(None if p is None else tuple(p.new_zeros(d, d) for d in sizes))
            roots.append(None if p is None else tuple(
                torch.eye(d, dtype=p.dtype, device=p.device) for d in sizes))
        count = torch.zeros((), dtype=torch.int64, device=first_device(params))
        second = _tree.map(lambda p: p.new_zeros(p.shape if moment else (0,)), params)
        return ScaleByShampooState(count, second, spec.unflatten(stats), spec.unflatten(roots))

    def graft_direction(g, s, h, t):
        if graft == "adagrad":
            s = s + g * g
            return g / (safe_sqrt(s, nonnegative=True) + h["graft_eps"]), s
        if graft == "adam":
            b = h["graft_beta2"]
            s = _execute.lerp(s, g * g, 1 - b)
            return g / (safe_sqrt(s / (1 - b ** t), nonnegative=True) + h["graft_eps"]), s
        return g, s

    def leaf(g, s, stats, roots, h, count):
        t = (count + 1).to(g.dtype)
        direction, s = graft_direction(g, s, h, t)
        plan = _blocks(tuple(g.shape), block_size, merge_small_dims)
        if plan is None:
            shampoo = g
        else:
            shampoo, stats, roots = precondition(g, stats, roots, plan, h, count)
        if graft != "none":
            norm = safe_sqrt((direction * direction).sum())
            shampoo = shampoo * (norm / (safe_sqrt((shampoo * shampoo).sum()) + 1e-16))
        started = count + 1 >= start_preconditioning_step
        return torch.where(started, shampoo, direction), s, stats, roots

    def precondition(g, stats, roots, plan, h, count):
        """The statistics and roots taken forward, and ``G`` preconditioned block by block."""
        pieces = plan.split(g.reshape(plan.shape))
        b2 = h["beta2"]
        if isinstance(b2, Number):
            weight = 1.0 if b2 == 1 else 1 - b2
        else:
            weight = torch.where(b2 == 1, torch.ones_like(b2), 1 - b2)
        new_stats = []
        for j, x in enumerate(pieces):
            for k in range(plan.rank):
                old = stats[j * plan.rank + k]
                new_stats.append(b2 * old + weight * axis_covariance(x, k))
        new_roots = refresh(count, new_stats, roots, plan, h["eps"], g.dtype)
        out = []
        for j, x in enumerate(pieces):
            for k in range(plan.rank):
                x = torch.tensordot(x, new_roots[j * plan.rank + k], dims=([0], [0]))
            out.append(x)
        return plan.merge(out).reshape(g.shape), tuple(new_stats), new_roots

    def refresh(count, stats, roots, plan, eps, dtype):
        p = inverse_exponent or 2 * plan.rank
        root_in = decomposition_dtype(dtype, root_dtype)

        def fresh():
            if root_method == "newton":
                return tuple(_newton_root(st, old, p, eps, root_in, root_iterations)
                             for st, old in zip(stats, roots))
            return tuple(_inverse_root(st, old, p, eps, root_in)
                         for st, old in zip(stats, roots))

        if host_refresh:
            return fresh() if (int(count) + 1) % precondition_frequency == 0 else roots
        due = torch.remainder(count + 1, precondition_frequency) == 0
        return tuple(torch.where(due, new, old) for new, old in zip(fresh(), roots))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByShampooState)
        spec = _tree.structure(updates)
        flat = _tree.leaves(updates)
        seconds = _tree.flatten_like(state.graft, spec, f"{owner} state.graft", "updates")
        stats = per_leaf(state.statistics, spec, owner, "statistics")
        roots = per_leaf(state.preconditioners, spec, owner, "preconditioners")
        check_real(owner, updates, flat)
        out = [[], [], [], []]
        for i, (g, s, st, r) in enumerate(zip(flat, seconds, stats, roots)):
            if g is not None:
                if moment:
                    check_like(owner, updates, i, g, s, "state.graft")
                plan = _blocks(tuple(g.shape), block_size, merge_small_dims)
                shapes = [] if plan is None else [(d, d) for d in plan.factor_sizes()]
                check_factors(owner, updates, i, "statistics", st, shapes)
                check_factors(owner, updates, i, "preconditioners", r, shapes)
            results = (None, s, st, r) if g is None else leaf(g, s, st, r, h, state.count)
            for column, value in zip(out, results):
                column.append(value)
        u, s, st, r = (spec.unflatten(column) for column in out)
        return u, ScaleByShampooState(state.count + 1, s, st, r)

    return Transform(init, update, defaults)

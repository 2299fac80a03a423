r"""PSGD-Kron: a Kronecker-factored preconditioner fitted by Li's whitening criterion (Li, 2018,
*Preconditioned Stochastic Gradient Descent*; the Kron preconditioner of ``psgd_torch`` as
``kron_torch``'s ``Kron`` runs it).

Each leaf keeps per axis :math:`k` a factor :math:`Q_k`, upper triangular (or diagonal: a
vector, a large or size-1 axis, ``memory_save_mode``); the preconditioner is
:math:`P = \bigotimes_k Q_k^\top Q_k`. With probability ``preconditioner_update_probability``
per update the factors take one step on the criterion
:math:`\mathbb{E}[h^\top P h + v^\top P^{-1} v]` (:math:`h` the momentum, :math:`v \sim
\mathcal{N}(0, I)`), whose minimum whitens :math:`h`: :math:`P\,\mathbb{E}[h h^\top] P = I`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import _execute, _random
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
    per_leaf,
    rotate,
)

__all__ = ["ScaleByPsgdKronState", "scale_by_psgd_kron"]

_TINY = torch.finfo(torch.bfloat16).tiny  # the reference's floor of a normalizer
_MODES = (None, "one_diag", "all_diag")


class ScaleByPsgdKronState(NamedTuple):
    """State of :func:`scale_by_psgd_kron`.

    Attributes:
        count: updates so far (0-d int64).
        key: the random stream (:mod:`functional_optim._random`): the update decision and
            the probes :math:`v` of each update.
        mu: the momentum (shaped like the parameters).
        factors: per leaf a tuple, per axis its :math:`Q_k`: ``(d, d)`` upper triangular or
            ``(d,)`` diagonal (a scalar leaf: one 0-d factor).
    """

    count: Any
    key: Any
    mu: Any
    factors: Any


def _diagonal_axes(shape: tuple, max_size: int, min_ndim: int, mode: str | None) -> tuple:
    """Per axis whether its factor is diagonal (the reference's rule)."""
    if mode == "all_diag":
        return (True,) * len(shape)
    largest = max(range(len(shape)), key=lambda i: (shape[i], i)) if shape else None
    return tuple(size == 1 or size > max_size or len(shape) < min_ndim
                 or (mode == "one_diag" and i == largest) for i, size in enumerate(shape))


def _norm_lower_bound(a: torch.Tensor) -> torch.Tensor:
    """A cheap lower bound of the spectral norm of a symmetric ``a``: one power step from its
    row of largest norm (0 for a zero matrix), as the reference (its branch on the larger of
    the row and column norms is a tensor select)."""
    max_abs = a.abs().amax()
    scale = torch.where(max_abs > 0, max_abs, torch.ones_like(max_abs))
    b = a / scale
    sq = b * b
    cols, rows = sq.sum(0), sq.sum(1)
    index = torch.arange(b.shape[0], device=b.device)
    col = (index == cols.argmax()).to(b.dtype)
    row = (index == rows.argmax()).to(b.dtype)
    x0 = (b @ col) @ b
    x1 = b @ (row @ b)
    n0 = torch.linalg.vector_norm(b @ (x0 / safe_sqrt((x0 * x0).sum())))
    n1 = torch.linalg.vector_norm(b.T @ (x1 / safe_sqrt((x1 * x1).sum())))
    bound = torch.where(cols.amax() > rows.amax(), n0, n1) * scale
    return torch.where(max_abs > 0, bound, max_abs)


def _solve_axes(v: torch.Tensor, factors: tuple) -> torch.Tensor:
    r""":math:`v` multiplied along each axis :math:`k` by :math:`Q_k^{-1}` from the right
    (:math:`Q_1^{-\top} V Q_2^{-1}` for a matrix): triangular solves, or divisions by a
    diagonal factor."""
    if v.ndim == 0:
        return v / factors[0]
    for q in factors:
        moved = v.movedim(0, -1)
        if q.ndim < 2:
            v = moved / q
        else:
            flat = moved.reshape(-1, moved.shape[-1])
            v = torch.linalg.solve_triangular(q, flat, upper=True, left=False).reshape(
                moved.shape)
    return v


def _apply(x: torch.Tensor, factors: tuple) -> torch.Tensor:
    """``x`` multiplied along each axis :math:`k` by :math:`Q_k` from the left (:math:`Q_1 X
    Q_2^\\top` for a matrix), a diagonal factor elementwise."""
    if x.ndim == 0:
        return x * factors[0]
    for q in factors:
        x = x.movedim(0, -1) * q if q.ndim < 2 else rotate(x, (q,), back=True)
    return x


def _gram_terms(x: torch.Tensor, axis: int, diagonal: bool) -> torch.Tensor:
    if x.ndim == 0 or (diagonal and x.ndim == 1):
        return x * x
    if diagonal:
        return (x * x).sum(dim=tuple(a for a in range(x.ndim) if a != axis))
    return axis_covariance(x, axis)


def scale_by_psgd_kron(momentum: float = 0.9, preconditioner_update_probability: float = 1.0,
                       precond_lr: float = 0.1, *, max_size_triangular: int = 2048,
                       min_ndim_triangular: int = 2, memory_save_mode: str | None = None,
                       momentum_into_precond_update: bool = True,
                       precond_init_scale: float = 1.0,
                       precond_dtype: torch.dtype | None = None, seed: int = 0) -> Transform:
    r"""PSGD-Kron's direction (Li, 2018), as ``kron_torch``'s ``Kron`` computes it (without
    weight decay and learning rate: :func:`functional_optim.psgd_kron`).

    At update :math:`t = 1, 2, \ldots` with gradient :math:`g`:

    .. math::
        m \leftarrow \beta m + (1 - \beta) g, \qquad \hat m = m / (1 - \beta^t).

    With probability :math:`p` (``preconditioner_update_probability``; one draw per update for
    all leaves, :math:`u < p` with :math:`u` uniform from the state's key) every factor takes
    one step, with :math:`h = \hat m` (``g`` if not ``momentum_into_precond_update``) and a
    probe :math:`v \sim \mathcal N(0, I)` (from the key, per leaf):
    :math:`A = h \times_k Q_k`, :math:`B = v \times_k Q_k^{-\top}` and, per axis, the Gram
    matrices :math:`T_1 = A^{(k)} A^{(k)\top}`, :math:`T_2 = B^{(k)} B^{(k)\top}`:

    .. math::
        Q_k \leftarrow Q_k - \frac{\eta_p}{\lVert T_1 + T_2 \rVert_{lb} + \tau}
        \mathrm{triu}(T_1 - T_2)\, Q_k

    (:math:`\lVert\cdot\rVert_{lb}` a cheap lower bound of the spectral norm; for a diagonal
    factor the diagonals of :math:`T_1, T_2`, the max norm and an elementwise product;
    :math:`\eta_p` = ``precond_lr``, :math:`\tau` the smallest normal bfloat16). Then

    .. math::
        u = c \cdot \hat m \times_k Q_k^\top Q_k, \qquad
        c = \min\big(1, 1.1 / (\mathrm{RMS}(\hat m \times_k Q_k^\top Q_k) + 10^{-6})\big).

    Factors: per axis upper triangular, :math:`s^{1/r} I` at ``init``
    (:math:`s` = ``precond_init_scale``, :math:`r` the leaf's rank), or diagonal
    (:math:`s^{1/r}` ones) for an axis of size 1 or above ``max_size_triangular``, every axis
    of a leaf of rank below ``min_ndim_triangular`` (vectors by default), the largest axis
    with ``memory_save_mode="one_diag"``, every axis with ``"all_diag"``; a scalar has one
    scalar factor. The reference's random rebalancing of the factors' scales (which leaves
    :math:`P` unchanged) is not done.

    *Randomness*: a counter-based key in the state, seeded by ``seed``
    (:mod:`functional_optim._random`): reproducible, one stream per ``vmap`` member with a
    batched seed, capturable. *Precision*: the factors' update runs in ``precond_dtype``
    (``None``: the leaf's dtype, at least float32; the reference solves its triangular systems
    in float32 whatever the dtype) and they are stored in the leaf's dtype.
    Everything is a tensor select: pure, differentiable (the draw is not), capturable.
    Real parameters only.

    Args:
        momentum: ``β`` (default 0.9).
        preconditioner_update_probability: ``p`` (default 1; the reference anneals it: a
            schedule through :func:`functional_optim.inject_hparams`).
        precond_lr: ``η_p`` (default 0.1).
        max_size_triangular: the largest triangular factor (structural; default 2048).
        min_ndim_triangular: the smallest rank with triangular factors (structural; 2).
        memory_save_mode: ``None``, ``"one_diag"`` or ``"all_diag"`` (structural).
        momentum_into_precond_update: fit on the momentum, else the gradient (structural).
        precond_init_scale: ``s`` (structural, read by ``init``; default 1).
        precond_dtype: the factors' update precision (structural; see above).
        seed: the random stream (structural int, or a 0-d integer tensor under ``vmap``).
    """
    owner = "scale_by_psgd_kron"
    check_hparam(owner, "momentum", momentum, ge=0, lt=1)
    check_hparam(owner, "preconditioner_update_probability", preconditioner_update_probability,
                 ge=0, le=1)
    check_hparam(owner, "precond_lr", precond_lr, ge=0)
    check_hparam(owner, "precond_init_scale", precond_init_scale, gt=0)
    check_dim(owner, "max_size_triangular", max_size_triangular)
    check_dim(owner, "min_ndim_triangular", min_ndim_triangular)
    if memory_save_mode not in _MODES:
        raise HParamError(f"{owner}: memory_save_mode must be one of {_MODES}, got "
                          f"{memory_save_mode!r}")
    check_dtype(owner, "precond_dtype", precond_dtype)
    defaults = {"momentum": momentum,
                "preconditioner_update_probability": preconditioner_update_probability,
                "precond_lr": precond_lr}

    def diagonal(shape):
        return _diagonal_axes(shape, max_size_triangular, min_ndim_triangular, memory_save_mode)

    def factor_shapes(x):
        if x.ndim == 0:
            return [()]
        return [(d,) if diag else (d, d) for d, diag in zip(x.shape, diagonal(tuple(x.shape)))]

    def init(params):
        spec, flat = _tree.structure(params), _tree.leaves(params)
        factors = []
        for p in flat:
            if p is None:
                factors.append(None)
            elif p.ndim == 0:
                factors.append((torch.full((), precond_init_scale, dtype=p.dtype,
                                           device=p.device),))
            else:
                s = precond_init_scale ** (1 / p.ndim)
                factors.append(tuple(
                    torch.full((d,), s, dtype=p.dtype, device=p.device) if diag
                    else s * torch.eye(d, dtype=p.dtype, device=p.device)
                    for d, diag in zip(p.shape, diagonal(tuple(p.shape)))))
        device = first_device(params)
        return ScaleByPsgdKronState(torch.zeros((), dtype=torch.int64, device=device),
                                    _random.key(seed, device), _tree.zeros_like(params),
                                    spec.unflatten(factors))

    def fitted(h, factors, key, salt, lr):
        """The factors after one step on the whitening criterion, in the update's precision."""
        if not h.numel():  # (an empty parameter: no statistics, the factors stay)
            return factors
        dtype = decomposition_dtype(h.dtype, precond_dtype)
        qs = tuple(q.to(dtype) for q in factors)
        h = h.to(dtype)
        v = _random.normal(key, salt, h)
        a = _apply(h, qs)
        b = _solve_axes(v, qs)
        out = []
        for k, q in enumerate(qs):
            t1 = _gram_terms(a, k, q.ndim < 2)
            t2 = _gram_terms(b, k, q.ndim < 2)
            if q.ndim < 2:
                size = (t1 + t2).abs().amax() + _TINY
                out.append(q - lr * (t1 - t2) * q / size)
            else:
                size = _norm_lower_bound(t1 + t2) + _TINY
                out.append(q - (lr * torch.triu(t1 - t2) / size) @ q)
        return tuple(new.to(old.dtype) for new, old in zip(out, factors))

    def leaf(g, m, factors, h, t, key, do_update, salt):
        beta = h["momentum"]
        m = _execute.lerp(m, g, 1 - beta)
        debiased = m / (1 - beta ** t.to(g.dtype))
        target = debiased if momentum_into_precond_update else g
        new = fitted(target, factors, key, salt, h["precond_lr"])
        factors = tuple(torch.where(do_update, n, q) for n, q in zip(new, factors))
        pre = _precondition(debiased, factors)
        rms = safe_sqrt((pre * pre).mean())
        return pre * torch.clamp(1.1 / (rms + 1e-6), max=1.0), m, factors

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByPsgdKronState)
        spec = _tree.structure(updates)
        flat = _tree.leaves(updates)
        mus = _tree.flatten_like(state.mu, spec, f"{owner} state.mu", "updates")
        factors = per_leaf(state.factors, spec, owner, "factors")
        t = state.count + 1
        draw = _random.uniform(state.key, 0, torch.zeros((), dtype=torch.float64,
                                                         device=state.key.device))
        do_update = draw < h["preconditioner_update_probability"]
        check_real(owner, updates, flat)
        out = [[], [], []]
        for i, (g, m, f) in enumerate(zip(flat, mus, factors)):
            if g is not None:
                check_like(owner, updates, i, g, m, "state.mu")
                check_factors(owner, updates, i, "factors", f, factor_shapes(g))
            results = (None, m, f) if g is None else leaf(g, m, f, h, t, state.key, do_update,
                                                          1 + i)
            for column, value in zip(out, results):
                column.append(value)
        u, m, f = (spec.unflatten(column) for column in out)
        return u, ScaleByPsgdKronState(t, _random.next_key(state.key), m, f)

    return Transform(init, update, defaults)


def _precondition(x: torch.Tensor, factors: tuple) -> torch.Tensor:
    r""":math:`x \times_k Q_k^\top Q_k`: each axis multiplied by :math:`Q_k`, then by
    :math:`Q_k^\top` (two products of the leaf's size, never :math:`Q_k^\top Q_k` itself)."""
    if x.ndim == 0:
        return x * factors[0] * factors[0]
    for q in factors:
        if q.ndim < 2:
            x = x.movedim(0, -1) * (q * q)
        else:
            x = torch.tensordot(x, q, dims=([0], [1]))
            x = torch.tensordot(x, q, dims=([x.ndim - 1], [0]))
    return x

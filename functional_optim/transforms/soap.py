r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024, *SOAP:
Improving and Stabilizing Shampoo using Adam*).

Each leaf, viewed as a tensor of a few axes (consecutive axes merged with ``merge_dims``),
keeps per axis :math:`k` of size at most ``max_precond_dim`` a running Gram matrix
:math:`L_k` of the gradients along that axis and an orthogonal basis :math:`Q_k` of its
eigenvectors; Adam runs on the gradient rotated into that basis, and its step is rotated back.
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
    Layout,
    axis_covariance,
    check_dim,
    check_dtype,
    check_factors,
    check_like,
    check_real,
    decomposition_dtype,
    merged_shape,
    per_leaf,
    rotate,
)
from ._refresh import check_interval

__all__ = ["ScaleBySoapState", "scale_by_soap"]


class ScaleBySoapState(NamedTuple):
    """State of :func:`scale_by_soap`.

    Attributes:
        count: updates so far (0-d int64); the first one (0) only builds the basis.
        mu: Adam's first moment, in the current eigenbasis (shaped like the parameters).
        nu: Adam's second moment, in the current eigenbasis.
        factors: per leaf a tuple, per axis of the (merged) leaf its Gram matrix :math:`L_k`
            (``(0, 0)`` for an axis without one).
        bases: per leaf a tuple, per axis its eigenbasis :math:`Q_k` (identity at ``init``).
    """

    count: Any
    mu: Any
    nu: Any
    factors: Any
    bases: Any


def _layout(x: torch.Tensor, max_dim: int, merge: bool, one_d: bool) -> Layout:
    """SOAP's reference rule: a vector is preconditioned only with ``precondition_1d`` (and at
    most ``max_precond_dim`` long), a scalar never; other leaves (merged first with
    ``merge_dims``) on every axis of size at most ``max_precond_dim``."""
    if x.ndim == 1:
        return Layout(tuple(x.shape), (one_d and x.shape[0] <= max_dim,))
    shape = merged_shape(tuple(x.shape), max_dim) if merge and x.ndim > 1 else tuple(x.shape)
    return Layout(shape, tuple(d <= max_dim for d in shape))


def _eigenbasis(factor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The eigenvectors of ``factor`` by decreasing eigenvalue (``torch.linalg.eigh`` of
    :math:`L + 10^{-30} I` in ``dtype``, as the reference code)."""
    m = factor.detach().to(dtype)
    eye = torch.eye(m.shape[0], dtype=dtype, device=m.device)
    return torch.linalg.eigh(m + 1e-30 * eye)[1].flip(1).to(factor.dtype)


def _power_qr(factor: torch.Tensor, basis: torch.Tensor, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One power iteration from the basis sorted by its estimated eigenvalues, then QR: the new
    basis :math:`\\mathrm{qr}(L Q_{:, \\sigma})` and the permutation :math:`\\sigma`."""
    m, o = factor.detach().to(dtype), basis.detach().to(dtype)
    mo = m @ o
    order = torch.argsort((o * mo).sum(0), descending=True)
    return torch.linalg.qr(mo[:, order])[0].to(factor.dtype), order


def scale_by_soap(betas: tuple[float, float] = (0.95, 0.95), shampoo_beta: float = -1.0,
                  eps: float = 1e-8, *, precondition_frequency: int = 10,
                  max_precond_dim: int = 10000, merge_dims: bool = False,
                  precondition_1d: bool = False, normalize_grads: bool = False,
                  correct_bias: bool = True, precond_dtype: torch.dtype | None = torch.float32,
                  host_refresh: bool = False) -> Transform:
    r"""SOAP's direction (Vyas et al., 2024), as the authors' published ``SOAP`` computes it
    (without the learning rate and weight decay: :func:`functional_optim.soap`).

    Per leaf and per preconditioned axis :math:`k`, at update :math:`t = 0, 1, \ldots` with
    gradient :math:`G_t`:

    .. math::
        L_k \leftarrow \beta_s L_k + (1 - \beta_s)\, G_t^{(k)} G_t^{(k)\top}
        \quad (\text{the Gram matrix along axis } k)

    with :math:`\beta_s` = ``shampoo_beta`` (``β2`` when it is negative). Update 0 only
    builds the factors and the bases :math:`Q_k` = the eigenvectors of :math:`L_k` by
    decreasing eigenvalue; its output is zero. Then, with :math:`\tilde G = G \times_k
    Q_k^\top` (``G`` rotated into the eigenbasis):

    .. math::
        m \leftarrow \beta_1 m + (1 - \beta_1) \tilde G, \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) \tilde G^2, \quad
        u = \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}
            \Big(\frac{m}{\sqrt v + \epsilon}\Big) \times_k Q_k

    (without the bias factor if not ``correct_bias``; divided by its RMS + 1e-30 with
    ``normalize_grads``). After the step the factors take :math:`G_t`, and when
    :math:`t > 0` and :math:`t \bmod f = 0` (``precondition_frequency``) each basis is refreshed
    by one power iteration: its columns sorted by :math:`\mathrm{diag}(Q_k^\top L_k Q_k)`
    (decreasing; ``v`` is permuted alike along axis :math:`k`) and
    :math:`Q_k \leftarrow \mathrm{qr}(L_k Q_k)`; ``m`` follows the basis (rotated back with the
    old one, into the new one).

    *Leaves* (the reference's rule): a scalar is never rotated (plain Adam, also skipping
    update 0), a vector only with ``precondition_1d``; other leaves, their axes merged first
    with ``merge_dims`` (consecutive axes while the product is at most ``max_precond_dim``),
    on every axis of size at most ``max_precond_dim``.

    *Precision*: the eigendecomposition and QR run in ``precond_dtype`` (float32, as the
    reference; ``None``: the leaf's dtype, at least float32) and the bases are stored in the
    leaf's dtype, as every other state tensor (the reference keeps its factors in float32).

    *Derivatives*: the bases are a choice of coordinates, not differentiated (the
    eigenvectors' derivative is undefined where eigenvalues repeat, e.g. at a zero gradient);
    meta-gradients flow through the rotations, the moments and the factors' statistics.

    *The refresh*: ``host_refresh=False`` (default) computes the eigendecomposition and the QR
    refresh at every update and keeps them where due by :func:`torch.where` (no host
    sync: ``vmap``, ``torch.func.grad``, ``torch.compile`` apply); ``torch.linalg.eigh``
    synchronizes a CUDA device with the host, so the update is not CUDA-graph capturable.
    ``host_refresh=True`` reads the count on the host (one sync per update) and decomposes only
    when due (update 0: eigh; refresh steps: QR), for eager training: the same numbers.
    Real parameters only.

    Args:
        betas: ``(β1, β2)`` (default ``(0.95, 0.95)``, the reference's).
        shampoo_beta: ``β_s``, the factors' decay; negative: ``β2`` (default -1).
        eps: ``ε`` (default 1e-8).
        precondition_frequency: ``f`` (structural int >= 1; default 10).
        max_precond_dim: the largest axis with a factor (structural; default 10000).
        merge_dims: merge consecutive axes first (structural).
        precondition_1d: rotate vectors too (structural).
        normalize_grads: divide the step by its RMS (structural).
        correct_bias: Adam's bias correction (structural; default True).
        precond_dtype: the decompositions' precision (structural; see above).
        host_refresh: decide the decompositions on the host (structural; see above).
    """
    owner = "scale_by_soap"
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise HParamError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    check_hparam(owner, "betas[0]", betas[0], ge=0, lt=1)
    check_hparam(owner, "betas[1]", betas[1], ge=0, lt=1)
    check_hparam(owner, "shampoo_beta", shampoo_beta, lt=1)
    check_hparam(owner, "eps", eps, ge=0)
    check_interval(owner, "precondition_frequency", precondition_frequency)
    check_dim(owner, "max_precond_dim", max_precond_dim)
    check_dtype(owner, "precond_dtype", precond_dtype)
    defaults = {"betas": tuple(betas), "shampoo_beta": shampoo_beta, "eps": eps}

    def layout(x):
        return _layout(x, max_precond_dim, merge_dims, precondition_1d)

    def init(params):
        spec, flat = _tree.structure(params), _tree.leaves(params)
        factors, bases = [], []
        for p in flat:
            shapes = None if p is None else layout(p).factor_shapes()
            factors.append(None if p is None else tuple(p.new_zeros(s) for s in shapes))
            bases.append(None if p is None else tuple(
                torch.eye(s[0], dtype=p.dtype, device=p.device) for s in shapes))
        count = torch.zeros((), dtype=torch.int64, device=first_device(params))
        return ScaleBySoapState(count, _tree.zeros_like(params), _tree.zeros_like(params),
                                spec.unflatten(factors), spec.unflatten(bases))

    def leaf(g, m, v, factors, bases, h, count):
        lay = layout(g)
        b1, b2 = h["betas"]
        beta_s = h["shampoo_beta"]
        if isinstance(beta_s, Number):
            beta_s = beta_s if beta_s >= 0 else b2
        else:
            beta_s = torch.where(beta_s >= 0, beta_s, b2)
        started = count > 0
        x = g.reshape(lay.shape)
        # Adam in the current basis (the output and moments of update 0 are kept at zero)
        gr = rotate(x, bases)
        mr, vr = m.reshape(lay.shape), v.reshape(lay.shape)
        m1 = torch.where(started, _execute.lerp(mr, gr, 1 - b1), mr)
        v1 = torch.where(started, _execute.lerp(vr, gr * gr, 1 - b2), vr)
        step = m1 / (safe_sqrt(v1, nonnegative=True) + h["eps"])
        u = rotate(step, bases, back=True)
        if correct_bias:
            t = torch.clamp(count, min=1).to(g.dtype)
            u = u * (safe_sqrt(1 - b2 ** t) / (1 - b1 ** t))
        if normalize_grads:
            u = u / (safe_sqrt((u * u).mean()) + 1e-30)
        u = torch.where(started, u, torch.zeros_like(u))
        # the factors take this gradient; the bases are refreshed where due
        new_factors = tuple(f if f.numel() == 0 else _execute.lerp(
            f, axis_covariance(x, k).to(f.dtype), 1 - beta_s) for k, f in enumerate(factors))
        new_bases, v2, m2 = refresh(count, x, new_factors, bases, v1, m1, lay)
        return u.reshape(g.shape), m2.reshape(g.shape), v2.reshape(g.shape), new_factors, \
            new_bases

    def refresh(count, x, factors, bases, v, m, lay):
        dtype = decomposition_dtype(x.dtype, precond_dtype)
        due = (torch.remainder(count, precondition_frequency) == 0) & (count > 0)
        first = count == 0

        def fresh_qr():
            out, perm_v = [], v
            for k, (f, q) in enumerate(zip(factors, bases)):
                if f.numel() == 0:
                    out.append(q)
                    continue
                q_new, order = _power_qr(f, q, dtype)
                perm_v = perm_v.index_select(k, order)
                out.append(q_new)
            return tuple(out), perm_v

        def fresh_eigh():
            return tuple(q if f.numel() == 0 else _eigenbasis(f, dtype)
                         for f, q in zip(factors, bases))

        if host_refresh:
            c = int(count)
            if c == 0:
                return fresh_eigh(), v, m
            if c % precondition_frequency:
                return bases, v, m
            qr_bases, v_new = fresh_qr()
            return qr_bases, v_new, rotate(rotate(m, bases, back=True), qr_bases)
        qr_bases, v_qr = fresh_qr()
        eig_bases = fresh_eigh()
        new_bases = tuple(torch.where(first, e, torch.where(due, r, q))
                          for e, r, q in zip(eig_bases, qr_bases, bases))
        m_new = torch.where(due, rotate(rotate(m, bases, back=True), new_bases), m)
        return new_bases, torch.where(due, v_qr, v), m_new

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleBySoapState)
        spec = _tree.structure(updates)
        flat = _tree.leaves(updates)
        mus = _tree.flatten_like(state.mu, spec, f"{owner} state.mu", "updates")
        nus = _tree.flatten_like(state.nu, spec, f"{owner} state.nu", "updates")
        factors = per_leaf(state.factors, spec, owner, "factors")
        bases = per_leaf(state.bases, spec, owner, "bases")
        check_real(owner, updates, flat)
        out = [[], [], [], [], []]
        for i, (g, m, v, f, q) in enumerate(zip(flat, mus, nus, factors, bases)):
            if g is not None:
                check_like(owner, updates, i, g, m, "state.mu")
                check_like(owner, updates, i, g, v, "state.nu")
                shapes = layout(g).factor_shapes()
                check_factors(owner, updates, i, "factors", f, shapes)
                check_factors(owner, updates, i, "bases", q, [(s[0], s[0]) for s in shapes])
            results = (None, m, v, f, q) if g is None else leaf(g, m, v, f, q, h, state.count)
            for column, value in zip(out, results):
                column.append(value)
        u, m, v, f, q = (spec.unflatten(column) for column in out)
        return u, ScaleBySoapState(state.count + 1, m, v, f, q)

    return Transform(init, update, defaults)

"""Adafactor's cache-blocked in-place step (the adapter's fast path for ``Adafactor``; the
blocks are :mod:`functional_optim._blocked`'s): its step size depends on norms over each
parameter, so each large leaf takes two passes, and small matrices of one shape run as one
batch. Not a pointwise rule, so not traced into a program (:func:`~functional_optim._blocked.
rule_step`): the step is written out here as foreach ops, beside the chain's
``scale_by_factored_rms`` (tested against it and torch.optim.Adafactor)."""

from __future__ import annotations

import itertools

import torch

from ._blocked import BLOCK, _by_value, _plain, blocks
from ._foreach import constant
from ._fused import FusedStep, _groups, _owned
from .base import resolve_hparams
from .transforms.factored import at_least

__all__ = ["adafactor_step"]


def mul_(xs: list, value: float) -> None:
    """``xs *= value`` in place, one kernel. The value is a 0-d tensor of the leaves' dtype (the
    Python-number overloads of ``_foreach_mul_``/``_foreach_add_`` wrap the number in a new
    tensor per leaf: 2 µs per leaf instead of 0.6; the same digits), made once per value
    (:func:`~functional_optim._foreach.constant`)."""
    torch._foreach_mul_(xs, constant(value, xs[0].dtype))


def adafactor_step(defaults: dict, where: str, *, maximize: bool) -> FusedStep:
    r"""Adafactor (see ``scale_by_factored_rms``), in two passes over each large leaf.

    The update :math:`U = G / \sqrt{\max(\hat V, \epsilon_1^2)}` is scaled by
    :math:`\alpha_t / \max(1, \mathrm{RMS}(U)/d)`, which needs all of :math:`U` first. torch
    materializes :math:`U` (and :math:`\hat V`) at full size; here the first pass updates the
    moments and accumulates :math:`\|U\|^2` block by block, and the second recomputes each
    block of :math:`U` (in cache) and applies it. Small vectors go through foreach kernels
    together. ``maximize`` flips the sign of the step (the moments see :math:`g^2`)."""

    def kernel(h, coefficients, p, g, row, col, var):
        weight, rho = coefficients
        eps1, eps2 = h["eps"]
        eps1 = torch.finfo(p[0].dtype).eps if eps1 is None else eps1
        scale = _AdafactorScale(h, rho, eps2, maximize)
        vectors = [i for i, x in enumerate(p) if x.ndim < 2]
        if len(vectors) > 1 or (vectors and p[vectors[0]].numel() <= BLOCK):
            _adafactor_vectors(*([c[i] for i in vectors] for c in (p, g, var)), weight, eps1,
                               scale)
        elif vectors:
            _adafactor_vector(p[0], g[0], var[0], weight, eps1, scale)
        shapes: dict = {}  # the small matrices by shape, each shape's in one batch
        for i, x in enumerate(p):
            if x.ndim >= 2:
                shapes.setdefault(x.shape if x.numel() <= BLOCK else i, []).append(i)
        for key, members in shapes.items():
            if isinstance(key, int):
                _adafactor_matrix(p[key], g[key], row[key], col[key], weight, eps1, scale)
            else:
                _adafactor_matrices(*([c[i] for i in members] for c in (p, g, row, col)),
                                    weight, eps1, scale)

    def fused(params, grads, state, hparams):
        h = resolve_hparams(defaults, hparams, where)
        steps = state.step
        groups = _groups(params, grads, None)
        if not all(_plain(v) for v in h.values()) or groups is None or any(
                d.type != "cpu" for d, _ in groups) or not all(
                t.is_cpu for t in steps.values()) or len({t.dtype for t in steps.values()}) > 1:
            return None
        # (the counts replaced, never written in place: the adapter may hand one tensor to
        # several parameters, a flat layout's shared count)
        params, state = _owned(params, state, shared=(steps,))
        names = list(params)
        advanced = torch.stack([steps[n] for n in names]) + 1
        counts = dict(zip(names, advanced.tolist()))
        columns = (state.row_var, state.col_var, state.variance)
        with torch.no_grad():
            for group in groups.values():
                for t, members in _by_value(group, [counts[n] for n in group]).items():
                    coefficients = (t ** h["beta2_decay"], min(h["lr"], 1 / t ** 0.5))
                    tables = [[params[n] for n in members], [grads[n] for n in members]]
                    tables += [[column[n] for n in members] for column in columns]
                    for part in blocks(tables, BLOCK, False):  # (whole: norms per leaf)
                        kernel(h, coefficients, *part)
        return state._replace(step=dict(zip(names, advanced.unbind())))

    return fused


class _AdafactorScale:
    r"""The step size of one leaf: :math:`-\alpha_t / \max(1, \mathrm{RMS}(U)/d)` with
    :math:`\alpha_t = \max(\epsilon_2, \mathrm{RMS}(p))\rho_t` (norms in float64), and the
    decoupled decay factor :math:`1 - \eta\lambda`."""

    def __init__(self, h: dict, rho: float, eps2: float, maximize: bool):
        self.rho, self.eps2, self.d = rho, eps2, h["d"]
        self.sign = 1.0 if maximize else -1.0
        self.keep = 1 - h["lr"] * h["weight_decay"]

    def __call__(self, p_norm: torch.Tensor, u_norm: torch.Tensor, numel: torch.Tensor):
        root = numel.double().sqrt()
        alpha = at_least(p_norm.double() / root, self.eps2) * self.rho
        return self.sign * alpha / at_least(u_norm.double() / (root * self.d), 1.0)


def _adafactor_vectors(p: list, g: list, var: list, weight: float, eps1: float,
                       scale: _AdafactorScale) -> None:
    """Small 0-d/1-d leaves together: foreach kernels, per-leaf norms."""
    p_norms = torch._foreach_norm(p)
    torch._foreach_lerp_(var, torch._foreach_mul(g, g), weight)
    u = torch._foreach_clamp_min(var, eps1 * eps1)
    torch._foreach_rsqrt_(u)
    torch._foreach_mul_(u, g)
    steps = scale(torch.stack(p_norms), torch.stack(torch._foreach_norm(u)),
                  torch.tensor([x.numel() for x in p]))
    if scale.keep != 1:
        mul_(p, scale.keep)
    torch._foreach_mul_(u, list(steps.to(p[0].dtype).unbind()))
    torch._foreach_add_(p, u)


def _vector_update(var: torch.Tensor, g: torch.Tensor, eps1: float) -> torch.Tensor:
    return var.clamp_min(eps1 * eps1).rsqrt_().mul_(g)


def _adafactor_vector(p, g, var, weight, eps1, scale) -> None:
    """One large 1-d leaf, block by block: the moment and ``‖U‖²``, then the update."""
    pieces = list(zip(*(x.reshape(-1).split(BLOCK) for x in (p, g, var))))
    u_sq = torch.zeros((), dtype=torch.float64)
    for _, gc, vc in pieces:
        vc.lerp_(gc * gc, weight)
        u_sq += torch.linalg.vector_norm(_vector_update(vc, gc, eps1)).double().square()
    step = scale(torch.linalg.vector_norm(p), u_sq.sqrt(), torch.tensor(p.numel())).item()
    for pc, gc, vc in pieces:
        if scale.keep != 1:
            pc.mul_(scale.keep)
        pc.add_(_vector_update(vc, gc, eps1), alpha=step)


def _adafactor_matrices(p: list, g: list, row: list, col: list, weight: float, eps1: float,
                        scale: _AdafactorScale) -> None:
    """Small matrices of one shape (each at most :data:`BLOCK` elements) as one batch: the
    gradients stacked, the factors and ``U`` computed for all of them at once, per-matrix norms
    and step sizes (per-matrix Python would cost more than the math, 30 ops a matrix)."""
    grads = torch.stack(g)
    sq = grads.square()
    m, n = grads.shape[-2:]
    torch._foreach_lerp_(row, list(sq.sum(dim=-1, keepdim=True).div_(n).unbind()), weight)
    torch._foreach_lerp_(col, list(sq.sum(dim=-2, keepdim=True).div_(m).unbind()), weight)
    rows = torch.stack(row)
    means = rows.mean(dim=-2, keepdim=True).clamp_(min=eps1)
    u = (rows @ torch.stack(col)).div_(means).clamp_(min=eps1 * eps1).rsqrt_().mul_(grads)
    u_norms = torch.linalg.vector_norm(u.flatten(1), dim=1)
    steps = scale(torch.stack(torch._foreach_norm(p)), u_norms, torch.tensor(p[0].numel()))
    if scale.keep != 1:
        mul_(p, scale.keep)
    u.mul_(steps.to(u.dtype).view(-1, *(1,) * (u.ndim - 1)))
    torch._foreach_add_(p, list(u.unbind()))


def _adafactor_matrix(p, g, row, col, weight, eps1, scale) -> None:
    """One leaf of >= 2 dimensions (factored over its last two), by blocks of rows: the row
    and column means of :math:`g^2` in one pass, the moments, ``‖U‖²``, then the update."""
    m, n = g.shape[-2:]
    chunk = max(1, BLOCK // n)
    # (leading index, first row): views of every layout, also non-contiguous ones
    parts = [(index, start) for index in itertools.product(*map(range, g.shape[:-2]))
             for start in range(0, m, chunk)]
    means = {}
    for index in itertools.product(*map(range, g.shape[:-2])):
        col_sq = torch.zeros_like(col[index])
        for start in range(0, m, chunk):
            sq = g[index][start:start + chunk].square()
            row[index][start:start + chunk].lerp_(sq.sum(dim=-1, keepdim=True).div_(n), weight)
            col_sq += sq.sum(dim=-2, keepdim=True)
        col[index].lerp_(col_sq.div_(m), weight)
        means[index] = row[index].mean(dim=-2, keepdim=True).clamp_(min=eps1)

    def update(index, start):
        estimate = row[index][start:start + chunk] @ col[index]
        return estimate.div_(means[index]).clamp_(min=eps1 * eps1).rsqrt_().mul_(
            g[index][start:start + chunk])

    u_sq = torch.zeros((), dtype=torch.float64)
    for index, start in parts:
        u_sq += torch.linalg.vector_norm(update(index, start)).double().square()
    step = scale(torch.linalg.vector_norm(p), u_sq.sqrt(), torch.tensor(p.numel())).item()
    for index, start in parts:
        piece = p[index][start:start + chunk]
        if scale.keep != 1:
            piece.mul_(scale.keep)
        piece.add_(update(index, start), alpha=step)

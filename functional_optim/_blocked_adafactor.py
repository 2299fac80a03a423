"""Adafactor's cache-blocked in-place step (the adapter's fast path for ``Adafactor``; the
blocks are :mod:`functional_optim._blocked`'s): its step size depends on norms over each
parameter, so each large leaf takes two passes, and small matrices of one shape run as one
batch. Not a pointwise rule, so not traced into a program (:func:`~functional_optim._blocked.
rule_step`): the step is written out here as foreach ops (:func:`classic_step`), beside the
chain's ``scale_by_factored_rms`` (tested against it and torch.optim.Adafactor)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

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


Field = tuple  # (block, field): a per-parameter column of the chain's state, e.g. ("rms", "nu")
# (block None: the state of an alias that is one block, e.g. adafactor)


def classic_step(*, defaults: dict, where: str, accepts: Callable[[dict, dict], bool],
                 counts: tuple[Field, ...], columns: tuple[Field, ...],
                 prepare: Callable[..., tuple], kernel: Callable[..., None],
                 scalars: tuple[Field, ...] = (), split: bool = True) -> FusedStep:
    """A fused step that runs ``kernel`` block by block (see :mod:`functional_optim._blocked`).

    Args:
        defaults: the alias's flat hyperparameters (to resolve a partial ``hparams``).
        where: the alias's name in errors.
        accepts: ``accepts(h, state)``: whether this step can take the hparams (all numbers)
            and the state (no schedule); else the chain runs.
        counts: the step counts, each ``+1`` (or ``counts(h)``: those that this step advances).
        columns: the per-element state the kernel updates in place, in its argument order.
        prepare: ``prepare(h, key, likes)`` → ``(coefficients, new_scalars)`` for the
            parameters that share ``key`` = (count after this step, *old values of
            ``scalars``); ``likes`` are the old ``scalars`` tensors of one of them (for their
            dtype); ``new_scalars`` holds one 0-d tensor per ``scalars`` field.
        kernel: ``kernel(h, coefficients, p, g, *columns)``, in place on one block (lists).
        scalars: 0-d state fields whose values the coefficients depend on (NAdam's
            ``mu_product``, ASGD's ``eta`` and ``mu``).
        split: whether a large leaf is split into blocks (``False``: the kernel gets it whole,
            for math that reduces over a leaf).

    0-d state (counts, ``scalars``) is replaced, never written in place: the adapter may hand
    the same tensor to several parameters (a flat layout's shared count), also to those that
    skip this step. Each parameter gets its own new tensor (views of one buffer), as torch's
    per-parameter state.
    """

    def fused(params, grads, state, hparams):
        h = resolve_hparams(defaults, hparams, where)
        if not (all(_plain(v) for v in h.values()) and accepts(h, state)):
            return None
        advancing = counts(h) if callable(counts) else counts
        olds = {f: _get(state, f) for f in advancing + scalars}
        groups = _groups(params, grads, None)
        if groups is None or any(device.type != "cpu" for device, _ in groups) or not all(
                t.is_cpu for column in olds.values() for t in column.values()) or any(
                len({t.dtype for t in olds[f].values()}) > 1 for f in advancing):
            return None
        params, state = _owned(params, state, shared=tuple(olds.values()))
        names = list(params)
        advanced = [torch.stack([olds[f][n] for n in names]) + 1 for f in advancing]
        new = {f: dict(zip(names, column.unbind())) for f, column in zip(advancing, advanced)}
        keys = dict(zip(names, zip(
            advanced[0].tolist(),
            *(torch.stack([olds[f][n] for n in names]).tolist() for f in scalars))))
        state_columns = [_get(state, f) for f in columns]
        with torch.no_grad():
            for group in groups.values():
                for key, members in _by_value(group, [keys[n] for n in group]).items():
                    coefficients, values = prepare(h, key,
                                                   [olds[f][members[0]] for f in scalars])
                    for f, value in zip(scalars, values):
                        new.setdefault(f, {}).update(
                            _spread(value, [olds[f][n] for n in members], members))
                    tables = [[params[n] for n in members], [grads[n] for n in members]]
                    tables += [[column[n] for n in members] for column in state_columns]
                    for part in blocks(tables, BLOCK, split):
                        kernel(h, coefficients, *part)
        if isinstance(state, dict):
            out = dict(state)
            for (block, field), column in new.items():
                out[block] = out[block]._replace(**{field: column})
            return out
        return state._replace(**{field: column for (_, field), column in new.items()})

    return fused


def _spread(value: torch.Tensor, olds: list, names: list) -> dict:
    """A new 0-d tensor per name, holding ``value`` in the dtype of the one it replaces."""
    if len({o.dtype for o in olds}) == 1:
        return dict(zip(names, value.to(olds[0].dtype).expand(len(names)).clone().unbind()))
    return {n: value.to(o.dtype).clone() for n, o in zip(names, olds)}


def _get(state: Any, field: Field) -> dict:
    """A field of the chain's state (``(None, field)``: of a one-block alias's own state)."""
    block, name = field
    return getattr(state if block is None else state[block], name)


def accepts_any(h, state) -> bool:
    """``accepts`` for a step that takes every state (its alias has no lr block)."""
    return True


def adafactor_step(defaults: dict, where: str, *, maximize: bool) -> FusedStep:
    r"""Adafactor (see ``scale_by_factored_rms``), in two passes over each large leaf.

    The update :math:`U = G / \sqrt{\max(\hat V, \epsilon_1^2)}` is scaled by
    :math:`\alpha_t / \max(1, \mathrm{RMS}(U)/d)`, which needs all of :math:`U` first. torch
    materializes :math:`U` (and :math:`\hat V`) at full size; here the first pass updates the
    moments and accumulates :math:`\|U\|^2` block by block, and the second recomputes each
    block of :math:`U` (in cache) and applies it. Small vectors go through foreach kernels
    together. ``maximize`` flips the sign of the step (the moments see :math:`g^2`)."""

    def prepare(h, key, likes):
        t = key[0]
        return (t ** h["beta2_decay"], min(h["lr"], 1 / t ** 0.5)), ()

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

    return classic_step(defaults=defaults, where=where, counts=((None, "step"),),
                        columns=((None, "row_var"), (None, "col_var"), (None, "variance")),
                        accepts=accepts_any, prepare=prepare, kernel=kernel, split=False)


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

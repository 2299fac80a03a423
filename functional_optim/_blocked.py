"""Cache-blocked in-place steps: the adapter's fast path for the algorithms that torch has no
fused kernel for (Adadelta, Adafactor, Adamax, ASGD, NAdam, RAdam, RMSprop, Rprop).

torch runs these either per tensor (the CPU default: every op on one tensor, then the next
tensor) or with foreach kernels (one op on every tensor, then the next op). Both make several
passes over memory per step; the per-tensor loop keeps a tensor's intermediates in cache but pays
Python per tensor and op, foreach pays each pass out of cache. Here the step runs the same
in-place ops (``torch._foreach_*_``, so scalars stay Python numbers) on *blocks* of about
:data:`BLOCK` elements: small tensors are grouped, large ones split into views. Every pass after
the first reads the block from cache, and the Python cost is one call per op and block.
Adafactor, whose step size depends on norms over each parameter, makes two such passes per
parameter (see :mod:`functional_optim._blocked_adafactor`).

Each step is the alias's ``fused`` step (see :mod:`functional_optim._fused`):
``fused(params, grads, state, hparams) -> state | None``, in place on the adapter's tensors;
``None`` (the adapter then runs the chain) unless every hyperparameter is a number, the leaves
are float32/float64 plain CPU tensors, and the step counts live on the CPU (torch's
non-capturable layout). On CUDA the chain runs (its multi-tensor path: on an H200, 1.9x-2.2x
torch's foreach RMSprop step, donated; these sequences have not run there). The numbers are
the chain's up to rounding order (tested against the chain and torch.optim).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Number
from typing import Any

import torch

from ._blocks import BLOCK, blocks
from ._foreach import constant
from ._fused import FusedStep, _groups, _owned
from .base import EmptyState, resolve_hparams
from .transforms.adaptive import RADAM_THRESHOLD, asgd_schedule

__all__ = ["BLOCK", "blocks", "classic_step"]

def _plain(value: Any) -> bool:
    """A number, ``None`` (RMSprop's ``momentum`` without block, Adafactor's ``eps[0]``), or a
    tuple of those (``betas``, Adafactor's ``eps``): what the blocked steps take."""
    if type(value) in (float, int) or value is None:
        return True
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, Number) and not isinstance(value, (bool, complex))


def mul_(xs: list, value: float) -> None:
    """``xs *= value`` in place, one kernel. The value is a 0-d tensor of the leaves' dtype (the
    Python-number overloads of ``_foreach_mul_``/``_foreach_add_`` wrap the number in a new
    tensor per leaf: 2 µs per leaf instead of 0.6; the same digits), made once per value
    (:func:`~functional_optim._foreach.constant`)."""
    torch._foreach_mul_(xs, constant(value, xs[0].dtype))


def _add_(xs: list, value: float) -> None:
    torch._foreach_add_(xs, [constant(value, xs[0].dtype)] * len(xs))


def _by_value(names: list[str], values: list) -> dict:
    """``names`` grouped by their value (one group unless some parameters skipped steps)."""
    if values.count(values[0]) == len(values):
        return {values[0]: names}
    groups: dict = {}
    for name, value in zip(names, values):
        groups.setdefault(value, []).append(name)
    return groups


def _gradients(p: list, g: list, weight_decay: float, maximize: bool) -> list:
    """``±g + λp`` as torch.optim computes it (new tensors only when something changes)."""
    if maximize:
        g = torch._foreach_neg(g)
        if weight_decay:
            torch._foreach_add_(g, p, alpha=weight_decay)
    elif weight_decay:
        g = torch._foreach_add(g, p, alpha=weight_decay)
    return g


Field = tuple  # (block, field): a per-parameter column of the chain's state, e.g. ("rms", "nu")
# (block None: the state of an alias that is one block, e.g. adafactor)


def classic_step(*, defaults: dict, where: str, accepts: Callable[[dict, dict], bool],
                 counts: tuple[Field, ...], columns: tuple[Field, ...],
                 prepare: Callable[..., tuple], kernel: Callable[..., None],
                 scalars: tuple[Field, ...] = (), split: bool = True) -> FusedStep:
    """A fused step that runs ``kernel`` block by block (see the module docstring).

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


def _get(state: Any, field: Field) -> dict:
    """A field of the chain's state (``(None, field)``: of a one-block alias's own state)."""
    block, name = field
    return getattr(state if block is None else state[block], name)


def _spread(value: torch.Tensor, olds: list, names: list) -> dict:
    """A new 0-d tensor per name, holding ``value`` in the dtype of the one it replaces."""
    if len({o.dtype for o in olds}) == 1:
        return dict(zip(names, value.to(olds[0].dtype).expand(len(names)).clone().unbind()))
    return {n: value.to(o.dtype).clone() for n, o in zip(names, olds)}


# --------------------------------------------------------------------------------------------
# The algorithms. Each kernel runs torch.optim's foreach sequence on one block; ``h`` is the
# alias's flat hparams (numbers), ``g`` the raw gradients.

def _no_schedule(h: dict, state: dict) -> bool:
    """``accepts`` for an alias ending in an lr block: no schedule there."""
    return isinstance(state["lr"], EmptyState)


def _decayed(h: dict, p: list, g: list, maximize: bool, decoupled: bool) -> list:
    """The gradient after ``maximize`` and coupled decay; decoupled decay scales ``p`` now."""
    if decoupled:
        if h["weight_decay"]:
            mul_(p, 1 - h["lr"] * h["weight_decay"])
        return _gradients(p, g, 0, maximize)
    return _gradients(p, g, h["weight_decay"], maximize)


def _adam_moments(h: dict, g: list, m: list, v: list) -> None:
    """``m = lerp(m, g, 1-β1)``, ``v = β2 v + (1-β2) g²``, in place."""
    beta1, beta2 = h["betas"]
    torch._foreach_lerp_(m, g, 1 - beta1)
    mul_(v, beta2)
    torch._foreach_addcmul_(v, g, g, value=1 - beta2)


def _none(h, key, likes):
    return None, ()


def accepts_any(h, state) -> bool:
    """``accepts`` for a step that takes every state (its alias has no lr block)."""
    return True


def rmsprop_step(defaults: dict, where: str, *, maximize: bool, centered: bool,
                 has_momentum: bool) -> FusedStep:
    r"""RMSprop: :math:`v \mathrel{*}= \alpha,\ v \mathrel{+}= (1-\alpha) g^2`,
    :math:`d = g / (\sqrt{v - \bar g^2} + \epsilon)`, then ``p -= lr * d`` or, where the alias
    has a momentum block (``has_momentum``) and the momentum is not 0, through the buffer
    :math:`b = \mu b + d` (whose count then advances, as the chain's ``trace``)."""

    columns = (("rms", "nu"),) + ((("rms", "mu"),) if centered else ()) + (
        (("momentum", "momentum_buffer"),) if has_momentum else ())

    def accepts(h, state):  # (a momentum without block: the chain raises the alias's error)
        return _no_schedule(h, state) and (has_momentum or not h["momentum"])

    def counts(h):
        return (("rms", "step"),) + ((("momentum", "step"),) if has_momentum and h["momentum"]
                                     else ())

    def kernel(h, _, p, g, v, *rest):
        g = _gradients(p, g, h["weight_decay"], maximize)
        alpha = h["alpha"]
        mul_(v, alpha)
        torch._foreach_addcmul_(v, g, g, value=1 - alpha)
        if centered:
            mean = rest[0]
            torch._foreach_lerp_(mean, g, 1 - alpha)
            avg = torch._foreach_addcmul(v, mean, mean, value=-1)
            torch._foreach_clamp_min_(avg, 0.0)  # as the chain's safe_sqrt
            torch._foreach_sqrt_(avg)
        else:
            avg = torch._foreach_sqrt(v)
        _add_(avg, h["eps"])
        if has_momentum and h["momentum"]:
            buf = rest[-1]
            mul_(buf, h["momentum"])
            torch._foreach_addcdiv_(buf, g, avg)
            torch._foreach_add_(p, buf, alpha=-h["lr"])
        else:
            torch._foreach_addcdiv_(p, g, avg, value=-h["lr"])

    return classic_step(defaults=defaults, where=where, counts=counts, columns=columns,
                        accepts=accepts, prepare=_none, kernel=kernel)


def adadelta_step(defaults: dict, where: str, *, maximize: bool) -> FusedStep:
    r"""Adadelta: :math:`v = \rho v + (1-\rho) g^2`,
    :math:`\Delta = \sqrt{a + \epsilon} / \sqrt{v + \epsilon}\, g`,
    :math:`a = \rho a + (1-\rho)\Delta^2`, ``p -= lr * Δ``."""

    def kernel(h, _, p, g, v, acc):
        g = _gradients(p, g, h["weight_decay"], maximize)
        rho, eps = h["rho"], h["eps"]
        mul_(v, rho)
        torch._foreach_addcmul_(v, g, g, value=1 - rho)
        std = torch._foreach_add(v, eps)
        torch._foreach_sqrt_(std)
        delta = torch._foreach_add(acc, eps)
        torch._foreach_sqrt_(delta)
        torch._foreach_div_(delta, std)
        torch._foreach_mul_(delta, g)
        mul_(acc, rho)
        torch._foreach_addcmul_(acc, delta, delta, value=1 - rho)
        torch._foreach_add_(p, delta, alpha=-h["lr"])

    return classic_step(defaults=defaults, where=where,
                        counts=(("adadelta", "step"),),
                        columns=(("adadelta", "square_avg"), ("adadelta", "acc_delta")),
                        accepts=_no_schedule,
                        prepare=_none, kernel=kernel)


def adamax_step(defaults: dict, where: str, *, maximize: bool) -> FusedStep:
    r"""Adamax: :math:`m = \mathrm{lerp}(m, g, 1-\beta_1)`,
    :math:`n = \max(\beta_2 n, |g| + \epsilon)`, ``p -= lr / (1 - β1^t) * m / n``."""

    def prepare(h, key, likes):
        return -h["lr"] / (1 - h["betas"][0] ** key[0]), ()

    def kernel(h, step_size, p, g, m, n):
        g = _gradients(p, g, h["weight_decay"], maximize)
        beta1, beta2 = h["betas"]
        torch._foreach_lerp_(m, g, 1 - beta1)
        mul_(n, beta2)
        bound = torch._foreach_abs(g)
        _add_(bound, h["eps"])
        torch._foreach_maximum_(n, bound)
        torch._foreach_addcdiv_(p, m, n, value=step_size)

    return classic_step(defaults=defaults, where=where,
                        counts=(("adamax", "step"),),
                        columns=(("adamax", "exp_avg"), ("adamax", "exp_inf")),
                        accepts=_no_schedule,
                        prepare=prepare, kernel=kernel)


def nadam_step(defaults: dict, where: str, *, maximize: bool, decoupled: bool) -> FusedStep:
    r"""NAdam: :math:`\mu_t = \beta_1(1 - \frac12 0.96^{t\psi})`, :math:`\Pi_t = \Pi_{t-1}\mu_t`,
    Adam's moments, then ``p -= lr * (c_g g + c_m m) / (sqrt(v / (1-β2^t)) + ε)`` with
    :math:`c_g = (1-\mu_t)/(1-\Pi_t)`, :math:`c_m = \mu_{t+1}/(1-\Pi_t\mu_{t+1})`."""

    def prepare(h, key, likes):
        t, product = key
        beta1, beta2 = h["betas"]
        psi = h["momentum_decay"]
        mu = beta1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        # in the state's dtype, as torch.optim.NAdam multiplies it
        dtype = likes[0].dtype
        new_product = torch.tensor(product, dtype=dtype) * torch.tensor(mu, dtype=dtype)
        product = new_product.item()
        lr = h["lr"]
        return (math.sqrt(1 - beta2 ** t), -lr * (1 - mu) / (1 - product),
                -lr * mu_next / (1 - product * mu_next)), (new_product,)

    def kernel(h, coefficients, p, g, m, v):
        root_bc2, c_grad, c_avg = coefficients
        g = _decayed(h, p, g, maximize, decoupled)
        _adam_moments(h, g, m, v)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, root_bc2)
        _add_(denom, h["eps"])
        torch._foreach_addcdiv_(p, g, denom, value=c_grad)
        torch._foreach_addcdiv_(p, m, denom, value=c_avg)

    return classic_step(defaults=defaults, where=where,
                        counts=(("nadam", "step"),), scalars=(("nadam", "mu_product"),),
                        columns=(("nadam", "exp_avg"), ("nadam", "exp_avg_sq")),
                        accepts=_no_schedule,
                        prepare=prepare, kernel=kernel)


def radam_step(defaults: dict, where: str, *, maximize: bool, decoupled: bool) -> FusedStep:
    r"""RAdam: Adam's moments, then ``p -= lr * r_t sqrt(1-β2^t) / (1-β1^t) * m / (sqrt(v) + ε)``
    once :math:`\rho_t > 5`, else ``p -= lr / (1-β1^t) * m`` (see ``scale_by_radam``)."""

    def prepare(h, key, likes):
        t = key[0]
        beta1, beta2 = h["betas"]
        bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2 ** t / bc2
        if rho_t <= RADAM_THRESHOLD:
            return (-h["lr"] / bc1, False), ()
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf /
                         ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        return (-h["lr"] * rect * math.sqrt(bc2) / bc1, True), ()

    def kernel(h, coefficients, p, g, m, v):
        step_size, adaptive = coefficients
        g = _decayed(h, p, g, maximize, decoupled)
        _adam_moments(h, g, m, v)
        if adaptive:
            denom = torch._foreach_sqrt(v)
            _add_(denom, h["eps"])
            torch._foreach_addcdiv_(p, m, denom, value=step_size)
        else:
            torch._foreach_add_(p, m, alpha=step_size)

    return classic_step(defaults=defaults, where=where,
                        counts=(("radam", "step"),),
                        columns=(("radam", "exp_avg"), ("radam", "exp_avg_sq")),
                        accepts=_no_schedule,
                        prepare=prepare, kernel=kernel)


def asgd_step(defaults: dict, where: str, *, maximize: bool, rounding: torch.dtype) -> FusedStep:
    r"""ASGD: ``p = p (1 - λη) - η g``, :math:`\bar p \mathrel{+}= \mu (p - \bar p)` (a copy
    while :math:`\mu = 1`), then :math:`\eta, \mu` from ``asgd_schedule``."""

    def prepare(h, key, likes):
        t, eta, mu = key
        if t == 1:  # the first step reads the lr, in the state's dtype (as torch does)
            eta = torch.tensor(h["lr"], dtype=likes[0].dtype).item()
        new = asgd_schedule(h, torch.tensor(t, dtype=torch.float64), rounding)
        return (1 - h["lambd"] * eta, -eta, mu), new

    def kernel(h, coefficients, p, g, ax):
        keep, step_size, mu = coefficients
        g = _gradients(p, g, h["weight_decay"], maximize)
        mul_(p, keep)
        torch._foreach_add_(p, g, alpha=step_size)
        if mu == 1:
            torch._foreach_copy_(ax, p)
        else:
            torch._foreach_lerp_(ax, p, mu)

    return classic_step(defaults=defaults, where=where,
                        counts=(("asgd", "step"),), scalars=(("asgd", "eta"), ("asgd", "mu")),
                        columns=(("asgd", "ax"),),
                        accepts=accepts_any,
                        prepare=prepare, kernel=kernel)


def _keep_where(out: list, x: list, keep: list) -> None:
    """``out = x`` where ``keep`` is 1, ``0`` where it is 0 (``torch.where(keep, x, 0)``).

    ``x * keep`` would make an infinite ``x`` NaN where ``keep`` is 0; instead ``x`` is
    clamped to ``±keep / (1 - keep)``, that is to ``±inf`` (unchanged) or to ``±0``. ``keep`` is
    overwritten."""
    bound = torch._foreach_neg(keep)
    _add_(bound, 1)
    torch._foreach_div_(keep, bound)
    torch._foreach_copy_(out, x)
    torch._foreach_clamp_max_(out, keep)
    torch._foreach_neg_(keep)
    torch._foreach_clamp_min_(out, keep)


def rprop_step(defaults: dict, where: str, *, maximize: bool) -> FusedStep:
    r"""Rprop: with :math:`s = \mathrm{sign}(g\,g_{prev})`, the step sizes grow by ``η+``
    (:math:`s > 0`) or shrink by ``η-`` (:math:`s < 0`), clipped to ``step_sizes``; where
    :math:`s < 0` the gradient counts as 0; ``p -= sign(g) * size``.

    The factor is the quadratic through ``(-1, η-), (0, 1), (1, η+)``, evaluated in foreach
    ops (torch's foreach Rprop uses per-tensor masked fills instead)."""

    def kernel(h, first, p, g, prev, size):
        g = _gradients(p, g, 0, maximize)
        eta_minus, eta_plus = h["etas"]
        if first:
            torch._foreach_zero_(size)
            _add_(size, h["lr"])
        sign = torch._foreach_mul(g, prev)
        torch._foreach_sign_(sign)
        factor = torch._foreach_mul(sign, constant((eta_plus + eta_minus) / 2 - 1, sign[0].dtype))
        _add_(factor, (eta_plus - eta_minus) / 2)
        torch._foreach_mul_(factor, sign)
        _add_(factor, 1)
        torch._foreach_mul_(size, factor)
        torch._foreach_clamp_min_(size, h["step_sizes"][0])
        torch._foreach_clamp_max_(size, h["step_sizes"][1])
        _add_(sign, 1)  # 0 where the sign flipped, else 1 or 2 (torch.sign(nan) is 0)
        torch._foreach_clamp_max_(sign, 1)
        _keep_where(prev, g, sign)
        direction = torch._foreach_sign(prev)
        torch._foreach_addcmul_(p, direction, size, value=-1)

    return classic_step(defaults=defaults, where=where,
                        counts=(("rprop", "step"),),
                        columns=(("rprop", "prev"), ("rprop", "step_size")),
                        accepts=accepts_any,
                        prepare=lambda h, key, likes: (key[0] == 1, ()), kernel=kernel)

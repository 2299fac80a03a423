"""torch's fused optimizer kernels as the in-place fast path of the aliases that have one.

An alias built from blocks (``adam``: ``[maximize] → [decay] → scale_by_adam → [decay] → lr``)
computes, in its chain, exactly what one of torch's fused kernels (``torch._fused_adam_``,
``_fused_adamw_``, ``_fused_sgd_``, ``_fused_adagrad_``) computes in a single pass over memory.
The alias attaches a *fused step* to its :class:`~functional_optim.Transform`::

    fused(params, grads, state, hparams) -> state | None

``params``, ``grads`` and ``state`` are the stateful adapter's (dicts keyed by parameter name,
tensors it owns): the step updates params and state **in place** and returns the state, or returns
``None`` when the kernel does not apply (a tensor beta, a schedule, complex or half-precision
leaves, a DTensor, a step count on another device, an hparam whose block the alias left out), and
the adapter then runs the chain. The numbers are the chain's up to rounding order (tested).

Only the adapter calls it, outside autograd and ``torch.compile``; the pure ``update`` is
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import Any

import torch

from .base import EmptyState

__all__ = ["adam_step", "sgd_step", "adagrad_step"]

FusedStep = Callable[[dict, dict, Any, dict], Any]

# dtypes on which the kernels compute as the chain does (half precision: the kernels compute in
# float32 and round once, the chain rounds every op, so they stay on the chain)
_DTYPES = (torch.float32, torch.float64)


def _number(x: Any) -> bool:
    return isinstance(x, Number) and not isinstance(x, (bool, complex))


def _groups(params: dict, grads: dict, steps: dict | None) -> dict | None:
    """Names of the leaves by (device, dtype), or ``None`` when a leaf is not for a kernel.

    Gradients match their parameter's dtype, device and shape (autograd enforces it on
    assignment), and state buffers too (``init`` and ``load_state_dict`` make them so); a step
    count may sit on another device (torch keeps it on the CPU unless capturable or fused).
    """
    groups: dict = {}
    for name, p in params.items():
        g = grads[name]
        if type(g) is not torch.Tensor or g.is_sparse or p.dtype not in _DTYPES:
            return None  # a DTensor, sparse or other subclass gradient; a dtype the chain keeps
        device = p.device
        if steps is not None and steps[name].device != device:
            return None
        groups.setdefault((device, p.dtype), []).append(name)
    if any(device.type not in ("cpu", "cuda") for device, _ in groups):
        return None
    return groups


def _lr(h: dict, device: torch.device) -> Any:
    """The lr as the kernels take it (a number, or a 0-d tensor on the parameters' device)."""
    lr = h["lr"]
    if _number(lr):
        return float(lr)
    if isinstance(lr, torch.Tensor) and lr.ndim == 0 and lr.device == device and \
            lr.dtype.is_floating_point:
        return lr
    return None


def _absent_ok(h: dict, keys: tuple[str, ...], present: dict) -> bool:
    """Each hparam must be a number; one whose block the alias left out must be 0 (else the
    chain raises the alias's error)."""
    return all(_number(h[k]) and (present[k] or h[k] == 0) for k in keys)


def _take(column: dict, names: list) -> list:
    return [column[n] for n in names]


def adam_step(*, decoupled: bool, amsgrad: bool, maximize: bool, has_decay: bool) -> FusedStep:
    """The fused step of ``adam``/``adamw`` (``torch._fused_adam_``/``_fused_adamw_``)."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_

    def fused(params, grads, state, h):
        if not (_absent_ok(h, ("eps", "weight_decay"), {"eps": True, "weight_decay": has_decay})
                and all(_number(b) for b in h["betas"]) and isinstance(state["lr"], EmptyState)):
            return None
        adam = state["adam"]
        groups = _groups(params, grads, adam.step)
        if groups is None:
            return None
        lrs = {key: _lr(h, key[0]) for key in groups}
        if any(lr is None for lr in lrs.values()):
            return None
        for key, names in groups.items():
            steps = _take(adam.step, names)
            torch._foreach_add_(steps, 1)
            kernel(_take(params, names), _take(grads, names), _take(adam.mu, names),
                   _take(adam.nu, names), _take(adam.nu_max, names) if amsgrad else [], steps,
                   lr=lrs[key], beta1=float(h["betas"][0]), beta2=float(h["betas"][1]),
                   weight_decay=float(h["weight_decay"]), eps=float(h["eps"]), amsgrad=amsgrad,
                   maximize=maximize)
        return state

    return fused


def sgd_step(*, nesterov: bool, maximize: bool, has_momentum: bool, has_decay: bool,
             count: bool = True) -> FusedStep:
    """The fused step of ``sgd`` (``torch._fused_sgd_``).

    The chain starts the momentum buffer at ``b_1 = g_1`` (torch's first step). With zero
    dampening that is ``μ·0 + g_1`` from the zero buffer ``init`` gives, so the kernel runs as on
    a later step; a nonzero dampening stays on the chain (telling the first step apart would read
    the count). ``count=False`` leaves the momentum's step counts as they are, for a caller that
    derives them (the drop-in ``SGD`` keeps none, as torch's).
    """

    def fused(params, grads, state, h):
        present = {"momentum": has_momentum, "weight_decay": has_decay, "dampening": True}
        if not (_absent_ok(h, ("momentum", "weight_decay", "dampening"), present)
                and h["dampening"] == 0 and isinstance(state["lr"], EmptyState)):
            return None
        trace = state["momentum"] if has_momentum else None
        groups = _groups(params, grads, trace.step if has_momentum else None)
        if groups is None:
            return None
        lrs = {key: _lr(h, key[0]) for key in groups}
        if any(lr is None for lr in lrs.values()):
            return None
        steps: dict = {}
        for key, names in groups.items():
            buffers = []
            if has_momentum:
                buffers = _take(trace.momentum_buffer, names)
                if count:  # new tensors: the adapter may hand out shared read-only counts
                    steps.update(zip(names, torch._foreach_add(_take(trace.step, names), 1)))
            torch._fused_sgd_(_take(params, names), _take(grads, names), buffers,
                              weight_decay=float(h["weight_decay"]),
                              momentum=float(h["momentum"]), lr=lrs[key], dampening=0.0,
                              nesterov=nesterov, maximize=maximize, is_first_step=False)
        if not (has_momentum and count):
            return state
        return {**state, "momentum": trace._replace(step=steps)}

    return fused


def adagrad_step(*, maximize: bool, has_decay: bool) -> FusedStep:
    """The fused step of ``adagrad`` (``torch._fused_adagrad_``)."""

    def fused(params, grads, state, h):
        present = {"lr_decay": True, "eps": True, "weight_decay": has_decay}
        if not (_absent_ok(h, ("lr_decay", "eps", "weight_decay"), present)
                and isinstance(state["lr"], EmptyState)):
            return None
        rss = state["rss"]
        groups = _groups(params, grads, rss.step)
        if groups is None:
            return None
        lrs = {key: _lr(h, key[0]) for key in groups}
        if any(lr is None for lr in lrs.values()):
            return None
        for key, names in groups.items():
            steps = _take(rss.step, names)
            torch._foreach_add_(steps, 1)
            torch._fused_adagrad_(_take(params, names), _take(grads, names),
                                  _take(rss.sum, names), steps, lr=lrs[key],
                                  lr_decay=float(h["lr_decay"]),
                                  weight_decay=float(h["weight_decay"]), eps=float(h["eps"]),
                                  maximize=maximize)
        return state

    return fused

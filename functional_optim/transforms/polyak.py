"""Polyak's step size, read from the loss value: :func:`scale_by_polyak`."""

from __future__ import annotations

from typing import Any

import torch

from .. import tree as _tree
from .._execute import scalar_dtype
from ..base import EmptyState, HParamError, Transform, check_hparam, resolve_hparams

__all__ = ["scale_by_polyak"]

_VARIANTS = ("sps", "sps+")


def _empty_init(params: Any) -> EmptyState:
    return EmptyState()


def _squared_norm(x: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum |x|^2` in the dtype of the 0-d coefficients (a finite gradient at 0)."""
    real = torch.view_as_real(x) if x.is_complex() else x
    return (real * real).sum().to(scalar_dtype(x))


def scale_by_polyak(f_min: float = 0.0, max_lr: float = 1.0, eps: float = 0.0,
                    variant: str = "sps") -> Transform:
    r"""Scales the updates by Polyak's step size (Loizou et al., 2021, *Stochastic Polyak
    Step-size for SGD: An Adaptive Learning Rate for Fast Convergence*), as optax's
    ``scale_by_polyak``; the loss value :math:`f(x_t)` comes as ``update(..., value=loss)``.

    .. math::
        \gamma_t = \begin{cases} 0 & \|u\|^2 + \epsilon \le \epsilon_{mach} \\
        \min\left(\dfrac{f(x_t) - f^\star}{\|u\|^2 + \epsilon},\ \gamma_{max}\right)
        & \text{otherwise} \end{cases}, \qquad u \mapsto \gamma_t u

    with :math:`\|u\|` the norm of all the updates together (across the shards of DTensors),
    :math:`\epsilon_{mach}` the machine epsilon of the first update's dtype (optax's
    ``finfo(float).eps``: float32's unless jax runs in 64 bits), and ``variant="sps+"``
    (structural) replacing the gap by :math:`\max(f(x_t) - f^\star, 0)`.

    Example (SGD with Polyak's step on a least-squares loss)::

        tx = fo.polyak_sgd(max_lr=1.0)  # chain(scale_by_learning_rate(1.0), scale_by_polyak())
        state = tx.init(params)
        loss, grads = torch.func.grad_and_value(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        params = fo.apply_updates(params, updates)

    Args:
        f_min: :math:`f^\star`, a lower bound of the loss (default 0).
        max_lr: :math:`\gamma_{max}` (default 1; optax's ``max_learning_rate``).
        eps: ``ε`` added to the squared norm (default 0).
        variant: ``"sps"`` or ``"sps+"`` (structural; default ``"sps"``).
    """
    owner = "scale_by_polyak"
    if variant not in _VARIANTS:
        raise HParamError(f"{owner}: variant must be one of {_VARIANTS}, got {variant!r}")
    check_hparam(owner, "f_min", f_min)
    check_hparam(owner, "max_lr", max_lr, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"f_min": f_min, "max_lr": max_lr, "eps": eps}

    def update(updates, state, params=None, hparams=None, *, value=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        leaves = [x for x in _tree.leaves(updates) if x is not None]
        if value is None:
            raise TypeError(f"{owner} needs the loss: call update(updates, state, params, "
                            "value=loss)")
        if not leaves:
            return updates, state
        squared = _tree.reduce_by_mesh(leaves, _squared_norm, torch.sum)
        gap = torch.as_tensor(value, dtype=squared.dtype, device=squared.device) - h["f_min"]
        if variant == "sps+":
            gap = torch.clamp(gap, min=0.0)
        denom = squared + h["eps"]
        tiny = denom <= torch.finfo(leaves[0].real.dtype).eps
        step = torch.where(tiny, 0.0, torch.minimum(gap / torch.where(tiny, 1.0, denom),
                                                    torch.as_tensor(h["max_lr"],
                                                                    dtype=squared.dtype,
                                                                    device=squared.device)))
        # (in each update's dtype: a 0-d update would take the step's float64)
        return _tree.map(lambda u: (u * step).to(u.dtype), updates), state

    return Transform(_empty_init, update, defaults)

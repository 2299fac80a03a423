"""Factored second moments: Adafactor (Shazeer & Stern, 2018), as torch.optim.Adafactor has it."""

from __future__ import annotations

import functools
from numbers import Number
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import elementwise, full, init_count, is_off, placed_like, scalar_dtype
from ..base import (
    HParamError,
    Transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)

__all__ = ["ScaleByFactoredRmsState", "scale_by_factored_rms"]

# the state of a factor that a leaf does not keep (a vector has no row/col factors, a matrix no
# full variance): an empty tensor, so every state field stays a tree shaped like the parameters
_NONE_SHAPE = (0,)


class ScaleByFactoredRmsState(NamedTuple):
    """State of :func:`scale_by_factored_rms`; every field is a tree shaped like the parameters.

    Attributes:
        step: per-parameter step count (0-d int64).
        row_var: for a parameter of >= 2 dimensions, the running mean of the squared gradient
            over its last dimension (shape ``(..., m, 1)``); an empty tensor otherwise.
        col_var: the same over the second-to-last dimension (shape ``(..., 1, n)``); empty for
            parameters of fewer than 2 dimensions.
        variance: for a parameter of 0 or 1 dimension, the running mean of the squared
            gradient (its shape); empty for >= 2 dimensions.
    """

    step: Any
    row_var: Any
    col_var: Any
    variance: Any


def _max(x, bound):
    """``max(x, bound)`` for a number or 0-d tensor ``bound`` (no host sync)."""
    if isinstance(bound, Number):
        return torch.clamp(x, min=bound)
    return torch.maximum(x, bound)


def _min(x, bound):
    if isinstance(bound, Number):
        return torch.clamp(x, max=bound)
    return torch.minimum(x, bound)


def _statistic(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Zeros shaped like ``p`` reduced over ``dim`` (kept as size 1), the initial mean of the
    squared gradient over that dimension. For a DTensor ``p``: a DTensor on its mesh, sharded as
    ``p`` along the other dimensions and replicated where ``p`` is sharded along ``dim`` (the
    layout of the reduction's result; made locally, no communication)."""
    shape = list(p.shape)
    dim = dim % p.ndim
    shape[dim] = 1
    key = _tree.layout(p)
    if key is None:
        return torch.zeros(shape, dtype=p.dtype, device=p.device)
    from torch.distributed.tensor import Replicate, zeros

    mesh, placements = key
    placements = [Replicate() if getattr(x, "dim", None) == dim else x for x in placements]
    return zeros(shape, dtype=p.dtype, device_mesh=mesh, placements=placements)


def _factored_rule(h, g, t, row, col, var, p, root_numel, n_last, n_prev, *, maximize):
    if maximize:
        g = -g
    lr = h["lr"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    weight = (tf ** h["beta2_decay"]).to(g.dtype)  # 1 - beta2_t = t^c
    rho = _min(1 / tf**0.5, lr)
    # relative step size: max(eps2, RMS(p)) * rho_t, RMS read in the parameter's dtype
    rms_p = full(torch.linalg.vector_norm(p)).to(tf.dtype) / root_numel
    alpha = _max(rms_p, h["eps2"]) * rho
    eps1 = h["eps1"] if h["eps1"] is not None else torch.finfo(g.dtype).eps
    if isinstance(eps1, torch.Tensor):  # a tensor hparam must not promote the leaf's math
        eps1 = eps1.to(g.dtype)
    if g.ndim >= 2:  # static: leaves are grouped by ndim
        row = torch.lerp(row, placed_like(
            torch.linalg.vector_norm(g, dim=-1, keepdim=True).square() / n_last, row), weight)
        col = torch.lerp(col, placed_like(
            torch.linalg.vector_norm(g, dim=-2, keepdim=True).square() / n_prev, col), weight)
        estimate = torch.matmul(row, col) / torch.clamp(row.mean(dim=-2, keepdim=True), min=eps1)
    else:
        var = torch.lerp(var, g * g, weight)
        estimate = var
    u = torch.clamp(estimate, min=eps1 * eps1).rsqrt() * g
    # update clipping: divide by max(1, RMS(u) / d)
    denom = _max(full(torch.linalg.vector_norm(u)).to(tf.dtype) / (root_numel * h["d"]), 1.0)
    out = placed_like(u, g) * (-alpha / denom)
    if not is_off(h["weight_decay"]):
        out = out - p * (lr * h["weight_decay"])
    return out, t, row, col, var


def scale_by_factored_rms(lr: float | torch.Tensor = 1e-2, beta2_decay: float = -0.8,
                          eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                          weight_decay: float = 0.0, *, maximize: bool = False) -> Transform:
    r"""Adafactor's factored second moments and relative step size (Shazeer & Stern, 2018), as
    torch.optim.Adafactor computes them. Outputs the final (descent) update.

    With :math:`\hat\beta_{2,t} = 1 - t^{c}` (``c = beta2_decay``), for a parameter of at least
    two dimensions (factored along its last two), with :math:`G_t` the gradient:

    .. math::
        R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t}) \operatorname{mean}_{-1}(G_t^2),
        \qquad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t}) \operatorname{mean}_{-2}(G_t^2), \\
        \hat V_t = \frac{R_t C_t}{\max(\operatorname{mean}_{-2}(R_t), \epsilon_1)}

    and for 0-d and 1-d parameters :math:`\hat V_t = \hat\beta_{2,t}\hat V_{t-1} +
    (1-\hat\beta_{2,t}) G_t^2` (unfactored). Then

    .. math::
        U_t = \frac{G_t}{\sqrt{\max(\hat V_t, \epsilon_1^2)}}, \quad
        \rho_t = \min(\eta, 1/\sqrt t), \quad
        \alpha_t = \max(\epsilon_2, \operatorname{RMS}(p_{t-1}))\,\rho_t, \\
        u_t = -\frac{\alpha_t}{\max(1, \operatorname{RMS}(U_t)/d)}\,U_t
              - \eta\lambda\,p_{t-1}

    (the last term is decoupled weight decay, skipped where ``weight_decay`` is the number 0).
    ``maximize`` uses :math:`G_t = -g_t`. The learning rate enters the
    relative step size, so it is an hparam of this block (not a separate
    ``scale_by_learning_rate``). Needs ``params``. Real parameters only (as torch).

    ``eps[0] = None`` means ``torch.finfo(dtype).eps`` of each parameter's dtype (torch takes
    it from the first parameter of a group); the hparam ``eps1`` may be ``None``, a number or
    a tensor at update time (``None`` there means the default).
    ``row_var``/``col_var``/``variance`` that a leaf does not keep are empty tensors.

    Args:
        lr: ``η`` (default 1e-2).
        beta2_decay: ``c <= 0`` (default -0.8).
        eps: ``(ε1, ε2)`` (default ``(None, 1e-3)``).
        d: clipping threshold ``>= 1`` (default 1).
        weight_decay: ``λ`` (default 0).
        maximize: ascend instead of descend (static).
    """
    owner = "scale_by_factored_rms"
    check_hparam(owner, "lr", lr, ge=0)
    check_hparam(owner, "beta2_decay", beta2_decay, le=0)
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise HParamError(f"{owner}: eps must be a pair (eps1 or None, eps2), got {eps!r}")
    if eps[0] is not None:
        check_hparam(owner, "eps[0]", eps[0], ge=0)
    check_hparam(owner, "eps[1]", eps[1], ge=0)
    check_hparam(owner, "d", d, ge=1)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps1": eps[0], "eps2": eps[1], "d": d,
                "weight_decay": weight_decay}
    rule = functools.partial(_factored_rule, maximize=maximize)

    def init(params):
        def empty(p):
            return torch.zeros(_NONE_SHAPE, dtype=p.dtype, device=p.device)

        return ScaleByFactoredRmsState(
            init_count(params),
            _tree.map(lambda p: _statistic(p, -1) if p.ndim >= 2 else empty(p), params),
            _tree.map(lambda p: _statistic(p, -2) if p.ndim >= 2 else empty(p), params),
            _tree.map(lambda p: empty(p) if p.ndim >= 2 else torch.zeros_like(p), params),
        )

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByFactoredRmsState)
        if missing_params(owner, updates, params, "its step size is relative to their RMS"):
            return updates, state
        # static per-leaf sizes: leaves group by them on the multi-tensor path
        root_numel = _tree.map(lambda p: p.numel() ** 0.5, params)
        n_last = _tree.map(lambda p: p.shape[-1] if p.ndim >= 1 else 1, params)
        n_prev = _tree.map(lambda p: p.shape[-2] if p.ndim >= 2 else 1, params)
        out, step, row, col, var = elementwise(
            rule, h, updates, (state.step, state.row_var, state.col_var, state.variance),
            (params, root_numel, n_last, n_prev), name=owner, real_only=True,
            input_names=("params", "size", "size", "size"))
        return out, ScaleByFactoredRmsState(step, row, col, var)

    return Transform(init, update, defaults)


"""Whole optimizers as short chains of building blocks, with torch.optim's names and defaults.

Each alias exposes one flat hparams dict with PyTorch's keys (``lr``, ``betas``, ``eps``,
``weight_decay``, ``momentum``, ``dampening``), so a ``param_group`` *is* an hparams dict. Options
that change the structure of the computation (``nesterov``, ``amsgrad``, ``maximize``,
``decoupled_weight_decay``) are static arguments.

A weight-decay or momentum block whose default is the Python number 0 is left out of the chain
(no cost, and ``params`` are then not needed); giving such a hyperparameter a nonzero value at
update time is an error. Construct with a nonzero value, or a tensor, to drive it at run time.
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import torch

from .base import HParamError, Transform, chain, check_hparam, reparametrize
from .schedules import as_schedule
from .transforms import add_decayed_weights, scale, scale_by_adam, scale_by_learning_rate, trace

__all__ = ["sgd", "adam", "adamw"]


def _present(value: Any) -> bool:
    """Whether a block is kept: a tensor, or a nonzero number."""
    return isinstance(value, torch.Tensor) or value != 0


def _check_lr(owner: str, lr: Any) -> None:
    """A number/tensor lr is validated here (schedules are callables, checked by the block)."""
    if not callable(lr):
        if not isinstance(lr, (Number, torch.Tensor)):
            raise HParamError(
                f"{owner}: lr must be a Python number, a 0-d tensor or a schedule, got "
                f"{type(lr).__name__} {lr!r}"
            )
        check_hparam(owner, "lr", lr, ge=0)


def _lr_hparam(lr: Any) -> Any:
    """The ``"lr"`` entry of an alias's hparams: the number/tensor, or a schedule's hparams."""
    if isinstance(lr, (Number, torch.Tensor)):
        return lr
    return as_schedule(lr, "lr").hparams


def _absent_check(owner: str, h: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = h[key]
        if not (isinstance(value, Number) and value == 0):
            raise HParamError(
                f"{owner}: {key} was 0 at construction, so its block is not in the chain; "
                f"got {key}={value!r} at update time. Construct with a nonzero or tensor {key} "
                "to set it at run time."
            )


def sgd(lr: float | torch.Tensor = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False) -> Transform:
    r"""Stochastic gradient descent, as torch.optim.SGD.

    .. math::
        g_t \leftarrow \pm g_t + \lambda p_{t-1}, \quad
        b_t = \mu b_{t-1} + (1-\tau) g_t\ (b_1 = g_1), \quad
        p_t = p_{t-1} - \eta\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Chain: ``[scale(-1) if maximize] → add_decayed_weights → trace → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        momentum: ``μ`` (default 0).
        dampening: ``τ`` (default 0).
        weight_decay: coupled L2 penalty ``λ`` (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: ascend instead of descend.
    """
    owner = "sgd"
    _check_lr(owner, lr)
    check_hparam(owner, "momentum", momentum, ge=0)
    check_hparam(owner, "dampening", dampening)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    if nesterov and not (_present(momentum) and dampening == 0):
        raise HParamError("sgd: nesterov momentum requires a momentum > 0 and zero dampening")
    blocks: dict[str, Transform] = {}
    if maximize:
        blocks["maximize"] = scale(-1.0)
    if _present(weight_decay):
        blocks["weight_decay"] = add_decayed_weights(weight_decay)
    if _present(momentum):
        blocks["momentum"] = trace(momentum, dampening, nesterov)
    blocks["lr"] = scale_by_learning_rate(lr)
    # for a schedule, "lr" is the schedule's own hparams dict (as in scale_by_learning_rate)
    defaults = dict(lr=blocks["lr"].hparams["lr"], momentum=momentum, dampening=dampening,
                    weight_decay=weight_decay)

    def to_inner(h):
        _absent_check("sgd", h, tuple(k for k in ("weight_decay", "momentum")
                                      if k not in blocks))
        inner = {"lr": {"lr": h["lr"]}}
        if "weight_decay" in blocks:
            inner["weight_decay"] = {"weight_decay": h["weight_decay"]}
        if "momentum" in blocks:
            inner["momentum"] = {"momentum": h["momentum"], "dampening": h["dampening"]}
        return inner

    return reparametrize(chain(**blocks), defaults, to_inner, f"{owner} hparams")


def adam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
         maximize: bool = False, decoupled_weight_decay: bool = False) -> Transform:
    r"""Adam (Kingma & Ba, 2015), as torch.optim.Adam.

    Coupled weight decay adds :math:`\lambda p` to the gradient before the moments; with
    ``decoupled_weight_decay=True`` it is AdamW's :math:`p \leftarrow p(1 - \eta\lambda)`.

    Chain: ``[scale(-1) if maximize] → [add_decayed_weights] → scale_by_adam →
    [add_decayed_weights if decoupled] → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: ``λ`` (default 0).
        amsgrad: AMSGrad variant (Reddi et al., 2018).
        maximize: ascend instead of descend.
        decoupled_weight_decay: AdamW's decay (Loshchilov & Hutter, 2019).
    """
    owner = "adamw" if decoupled_weight_decay else "adam"
    _check_lr(owner, lr)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise HParamError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    check_hparam(owner, "betas[0]", betas[0], ge=0, lt=1)
    check_hparam(owner, "betas[1]", betas[1], ge=0, lt=1)
    blocks: dict[str, Transform] = {}
    if maximize:
        blocks["maximize"] = scale(-1.0)
    decay = add_decayed_weights(weight_decay) if _present(weight_decay) else None
    if decay is not None and not decoupled_weight_decay:
        blocks["weight_decay"] = decay
    blocks["adam"] = scale_by_adam(betas, eps, amsgrad=amsgrad)
    if decay is not None and decoupled_weight_decay:
        blocks["weight_decay"] = decay
    blocks["lr"] = scale_by_learning_rate(lr)
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)

    def to_inner(h):
        inner = {"adam": {"betas": h["betas"], "eps": h["eps"]}, "lr": {"lr": h["lr"]}}
        if decay is None:
            _absent_check(owner, h, ("weight_decay",))
        else:
            inner["weight_decay"] = {"weight_decay": h["weight_decay"]}
        return inner

    return reparametrize(chain(**blocks), defaults, to_inner, f"{owner} hparams")


def adamw(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
          maximize: bool = False) -> Transform:
    r"""AdamW (Loshchilov & Hutter, 2019), as torch.optim.AdamW: Adam with decoupled decay.

    .. math:: p_t = p_{t-1} - \eta\left(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
              + \lambda p_{t-1}\right)

    Same arguments as :func:`adam`, with ``weight_decay`` defaulting to 1e-2.
    """
    return adam(lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                decoupled_weight_decay=True)

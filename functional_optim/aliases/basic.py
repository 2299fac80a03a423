"""SGD, Adam and AdamW, as torch.optim has them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _blocked, _fused
from .._execute import is_off
from ..base import HParamError, Transform, chain, check_betas, check_hparam
from ..registry import register
from ..transforms import add_decayed_weights, scale, scale_by_adam, scale_by_learning_rate, trace
from ._common import _check_lr, _decay_around, _no_momentum, _reparametrized

__all__ = ["sgd", "adam", "adamw"]


@register(paper=('Robbins & Monro, 1951, "A Stochastic Approximation Method"; momentum: Polyak, '
          '1964; Nesterov: Sutskever et al., 2013'),
          drop_in='SGD')
def sgd(lr: float | torch.Tensor = 1e-3, momentum: float | None = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
        detach_first: bool = False) -> Transform:
    r"""Stochastic gradient descent, as torch.optim.SGD.

    .. math::
        g_t \leftarrow \pm g_t + \lambda p_{t-1}, \quad
        b_t = \mu b_{t-1} + (1-\tau) g_t\ (b_1 = g_1), \quad
        p_t = p_{t-1} - \eta\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Chain: ``[scale(-1) if maximize] → add_decayed_weights → trace → scale_by_learning_rate``.
    A momentum that is the Python number 0 at update time skips the trace (torch's SGD without
    momentum: :math:`u = g`, the buffer untouched); ``momentum=None`` leaves it out (no buffer).

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        momentum: ``μ`` (default 0), or ``None`` (structural: no momentum block).
        dampening: ``τ`` (default 0).
        weight_decay: coupled L2 penalty ``λ`` (default 0).
        nesterov: Nesterov momentum (structural; needs momentum > 0 and dampening 0 at
            construction).
        maximize: ascend instead of descend (structural).
        detach_first: the first momentum buffer is a detached copy of the gradient, as
            torch.optim.SGD makes it (structural; :func:`~functional_optim.trace`).
    """
    owner = "sgd"
    _check_lr(owner, lr)
    if momentum is not None:
        check_hparam(owner, "momentum", momentum, ge=0)
    check_hparam(owner, "dampening", dampening)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    if nesterov and (momentum is None or is_off(momentum) or not is_off(dampening)):
        raise HParamError("sgd: nesterov momentum requires a momentum > 0 and zero dampening")
    blocks: dict[str, Transform] = {}
    if maximize:
        blocks["maximize"] = scale(-1.0)
    blocks["weight_decay"] = add_decayed_weights(weight_decay)
    if momentum is not None:
        blocks["momentum"] = trace(momentum, dampening, nesterov, detach_first=detach_first)
    blocks["lr"] = scale_by_learning_rate(lr)
    # for a schedule, "lr" is the schedule's own hparams dict (as in scale_by_learning_rate)
    defaults = dict(lr=blocks["lr"].hparams["lr"], momentum=momentum, dampening=dampening,
                    weight_decay=weight_decay)

    def to_inner(h):
        inner = {"lr": {"lr": h["lr"]}, "weight_decay": {"weight_decay": h["weight_decay"]}}
        if momentum is None:
            _no_momentum(owner, h)
        else:
            inner["momentum"] = {"momentum": h["momentum"], "dampening": h["dampening"]}
        return inner

    fused = _fused.sgd_step(nesterov=nesterov, maximize=maximize,
                            has_momentum=momentum is not None)
    tx = _reparametrized(owner, chain(**blocks), defaults, to_inner,
                         dict(nesterov=nesterov, maximize=maximize, detach_first=detach_first))
    return _blocked.with_rule_steps(tx, defaults, f"{owner} hparams", fused, blocked=False)


@register(paper=('Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization"; AMSGrad: Reddi '
          'et al., 2018'),
          drop_in='Adam')
def adam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
         maximize: bool = False, decoupled_weight_decay: bool = False) -> Transform:
    r"""Adam (Kingma & Ba, 2015), as torch.optim.Adam.

    Coupled weight decay adds :math:`\lambda p` to the gradient before the moments; with
    ``decoupled_weight_decay=True`` it is AdamW's :math:`p \leftarrow p(1 - \eta\lambda)`.

    Chain: ``[scale(-1) if maximize] → [add_decayed_weights if coupled] → scale_by_adam →
    [add_decayed_weights if decoupled] → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: ``λ`` (default 0).
        amsgrad: AMSGrad variant (Reddi et al., 2018; structural).
        maximize: ascend instead of descend (structural).
        decoupled_weight_decay: AdamW's decay (Loshchilov & Hutter, 2019; structural).
    """
    owner = "adamw" if decoupled_weight_decay else "adam"
    fused = _fused.adam_step(decoupled=decoupled_weight_decay, amsgrad=amsgrad, maximize=maximize)
    tx = adam_chain(owner, lambda: scale_by_adam(betas, eps, amsgrad=amsgrad), lr, betas, eps,
                    weight_decay, maximize, decoupled_weight_decay,
                    dict(amsgrad=amsgrad, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay))
    return _blocked.with_rule_steps(tx, tx.hparams, f"{owner} hparams", fused, blocked=False)


def adam_chain(owner: str, block: Callable[[], Transform], lr: Any, betas: tuple, eps: Any,
               weight_decay: Any, maximize: bool, decoupled: bool,
               structural: dict) -> Transform:
    """Adam's chain with torch's flat hyperparameters around the Adam block ``block()`` (built
    after the checks: :func:`scale_by_adam`, or it with its state stored otherwise), without
    a fused step; ``structural`` names the construction-time options."""
    check_hparam(owner, "eps", eps, ge=0)
    check_betas(owner, betas)
    blocks = _decay_around(owner, lr, weight_decay, maximize, decoupled, "adam", block())
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)

    def to_inner(h):
        return {"adam": {"betas": h["betas"], "eps": h["eps"]}, "lr": {"lr": h["lr"]},
                "weight_decay": {"weight_decay": h["weight_decay"]}}

    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)


@register(paper='Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization"',
          drop_in='AdamW')
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

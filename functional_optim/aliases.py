"""Whole optimizers as short chains of building blocks, with torch.optim's names and defaults.

Each alias exposes one flat hparams dict with PyTorch's keys (``lr``, ``betas``, ``eps``,
``weight_decay``, ``momentum``, ``dampening``), so a ``param_group`` *is* an hparams dict.

*Live and structural arguments.* Every float hyperparameter is live: a value (a Python number or
a 0-d tensor, which may require grad, be batched under ``vmap`` or be refilled between CUDA-graph
replays) read at every update, whatever it was at construction. No block is left out because of
a value: a weight decay or a momentum of 0 keeps its block in the chain, and where the value at
update time is the Python number 0 the block skips its work (and ``params`` are not needed for a
decay of 0). Only options that change the computation's structure are fixed at construction:
``amsgrad``, ``nesterov``, ``centered``, ``maximize``, ``decoupled_weight_decay``,
``initial_accumulator_value`` (read by ``init``), ``ns_steps``, ``adjust_lr_fn``, ``ns_dtype``,
``scalar_state_dtype``, L-BFGS's iteration limits and line search, and ``momentum=None`` (no
momentum block at all, so no buffer: the memory-lean plain SGD/RMSprop). Each alias's docstring
lists its structural arguments; giving one in ``hparams`` raises an error that says so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from numbers import Number
from typing import Any

import torch

from . import _blocked, _fused
from ._execute import is_off
from .base import HParamError, Transform, chain, check_betas, check_hparam, reparametrize
from .registry import register
from .transforms import (
    MUON_NS_COEFFICIENTS,
    add_decayed_weights,
    scale,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_asgd,
    scale_by_factored_rms,
    scale_by_lbfgs,
    scale_by_learning_rate,
    scale_by_muon,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
    scale_by_sparse_adam,
    trace,
)
from .transforms.adaptive import _torch_scalar_dtype

__all__ = ["sgd", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "radam", "rmsprop",
           "rprop", "asgd", "adafactor", "muon", "lbfgs", "sparse_adam"]


def _check_lr(owner: str, lr: Any) -> None:
    """A number/tensor lr is validated here (schedules are callables, checked by the block)."""
    if not callable(lr):
        if not isinstance(lr, (Number, torch.Tensor)):
            raise HParamError(
                f"{owner}: lr must be a Python number, a 0-d tensor or a schedule, got "
                f"{type(lr).__name__} {lr!r}"
            )
        check_hparam(owner, "lr", lr, ge=0)


def _no_momentum(owner: str, h: dict) -> None:
    """``momentum=None`` at construction (no block): a momentum at update time must be off."""
    value = h["momentum"]
    if value is not None and not is_off(value):
        got = (f"a tensor of dtype {value.dtype}" if isinstance(value, torch.Tensor)
               else f"{type(value).__name__} {value!r}")
        raise HParamError(
            f"{owner}: momentum is None (structural: no momentum block, so no buffer); got "
            f"{got} at update time. Construct with a number or tensor momentum (0 by default) "
            "to set it at run time."
        )


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
    return _reparametrized(owner, chain(**blocks), defaults, to_inner,
                           dict(nesterov=nesterov, maximize=maximize,
                                detach_first=detach_first))._replace(fused=fused)


def _decay_around(owner: str, lr: Any, weight_decay: Any, maximize: bool, decoupled: bool,
                  name: str | None = None, block: Transform | None = None, *,
                  lr_block: bool = True, **body: Transform) -> dict:
    """``[maximize] → [coupled decay] → body → [decoupled decay] → [lr]``: the decay block is
    always in the chain, before the body (L2) or after it (decoupled). The body is ``block``
    under ``name``, or the keyword blocks in order."""
    if lr_block:
        _check_lr(owner, lr)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    if name is not None:
        body = {name: block}
    blocks: dict[str, Transform] = {}
    if maximize:
        blocks["maximize"] = scale(-1.0)
    if not decoupled:
        blocks["weight_decay"] = add_decayed_weights(weight_decay)
    blocks.update(body)
    if decoupled:
        blocks["weight_decay"] = add_decayed_weights(weight_decay)
    if lr_block:
        blocks["lr"] = scale_by_learning_rate(lr)
    return blocks


def _reparametrized(owner: str, inner: Transform, defaults: dict, to_inner: Callable,
                    structural: dict) -> Transform:
    """``inner`` with torch's flat ``defaults``; ``structural`` names the construction-time
    options (a clear error when one is given in ``hparams``)."""
    return reparametrize(inner, defaults, to_inner, f"{owner} hparams", structural=structural)


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
    check_hparam(owner, "eps", eps, ge=0)
    check_betas(owner, betas)
    blocks = _decay_around(owner, lr, weight_decay, maximize, decoupled_weight_decay, "adam",
                           scale_by_adam(betas, eps, amsgrad=amsgrad))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)

    def to_inner(h):
        return {"adam": {"betas": h["betas"], "eps": h["eps"]}, "lr": {"lr": h["lr"]},
                "weight_decay": {"weight_decay": h["weight_decay"]}}

    fused = _fused.adam_step(decoupled=decoupled_weight_decay, amsgrad=amsgrad, maximize=maximize)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner,
                           dict(amsgrad=amsgrad, maximize=maximize,
                                decoupled_weight_decay=decoupled_weight_decay))._replace(
        fused=fused)


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


# --------------------------------------------------------------------------------------------
# Adagrad, Adadelta, Adamax, NAdam, RAdam, RMSprop, Rprop, ASGD (torch.optim's classic set)


def _classic(owner: str, blocks: dict, defaults: dict, block: str, keys: tuple,
             structural: dict, lr_block: bool = True,
             blocked: Callable | None = None) -> Transform:
    """``reparametrize`` a chain of ``blocks`` to torch's flat ``defaults``: ``keys`` go to
    ``blocks[block]``, ``lr`` to the learning-rate block, ``weight_decay`` to its block.

    ``blocked(defaults, where)`` makes the alias's cache-blocked step
    (:mod:`functional_optim._blocked`), the adapter's fast path."""

    def to_inner(h):
        inner: dict = {block: {k: h[k] for k in keys},
                       "weight_decay": {"weight_decay": h["weight_decay"]}}
        if lr_block:
            inner["lr"] = {"lr": h["lr"]}
        return inner

    if not lr_block:
        tx = _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)
        return tx if blocked is None else tx._replace(fused=blocked(defaults, f"{owner} hparams"))
    return _lr_folded(owner, blocks, defaults, to_inner, structural, blocked)


def _lr_folded(owner: str, blocks: dict, defaults: dict, to_inner, structural: dict,
               blocked: Callable | None = None) -> Transform:
    """``reparametrize(chain(**blocks))`` whose adapter step is the cache-blocked one where it
    applies (``blocked(defaults, where)``), else the chain with the trailing ``lr`` block folded
    into the parameter update (:func:`functional_optim._fused.lr_folded_step`)."""
    where = f"{owner} hparams"
    head = chain(**{k: b for k, b in blocks.items() if k != "lr"})
    fused = _fused.lr_folded_step(head, defaults, to_inner, where)
    if blocked is not None:
        fused = _fused.first(blocked(defaults, where), fused)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)._replace(
        fused=fused)


@register(paper=('Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online Learning '
          'and Stochastic Optimization"'),
          drop_in='Adagrad')
def adagrad(lr: float | torch.Tensor = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10, *,
            maximize: bool = False) -> Transform:
    r"""Adagrad (Duchi, Hazan & Singer, 2011), as torch.optim.Adagrad.

    .. math::
        g_t \leftarrow \pm g_t + \lambda p_{t-1}, \quad s_t = s_{t-1} + g_t^2, \quad
        p_t = p_{t-1} - \frac{\eta}{1 + (t-1)\delta}\,\frac{g_t}{\sqrt{s_t} + \epsilon}

    Chain: ``[scale(-1) if maximize] → add_decayed_weights → scale_by_rss →
    scale_by_learning_rate``. Hparams: ``lr``, ``lr_decay``, ``weight_decay``, ``eps``.

    Args:
        lr: ``η`` (default 1e-2), a number, tensor or schedule.
        lr_decay: ``δ`` (default 0).
        weight_decay: coupled L2 penalty ``λ`` (default 0).
        initial_accumulator_value: ``s_0`` (structural: read by ``init``; default 0).
        eps: ``ε`` (default 1e-10).
        maximize: ascend instead of descend (structural).
    """
    owner = "adagrad"
    blocks = _decay_around(owner, lr, weight_decay, maximize, False, "rss",
                           scale_by_rss(lr_decay, initial_accumulator_value, eps))
    defaults = dict(lr=blocks["lr"].hparams["lr"], lr_decay=lr_decay, weight_decay=weight_decay,
                    eps=eps)
    structural = dict(initial_accumulator_value=initial_accumulator_value, maximize=maximize)
    return _classic(owner, blocks, defaults, "rss", ("lr_decay", "eps"), structural)._replace(
        fused=_fused.adagrad_step(maximize=maximize))


@register(paper='Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method"', drop_in='Adadelta')
def adadelta(lr: float | torch.Tensor = 1.0, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: float = 0.0, *, maximize: bool = False) -> Transform:
    r"""Adadelta (Zeiler, 2012), as torch.optim.Adadelta.

    .. math::
        v_t = \rho v_{t-1} + (1-\rho) g_t^2, \quad
        \Delta_t = \frac{\sqrt{a_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t, \quad
        a_t = \rho a_{t-1} + (1-\rho)\Delta_t^2, \quad p_t = p_{t-1} - \eta \Delta_t

    Chain: ``[scale(-1) if maximize] → add_decayed_weights → scale_by_adadelta →
    scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1.0), a number, tensor or schedule.
        rho: ``ρ`` (default 0.9).
        eps: ``ε`` (default 1e-6).
        weight_decay: coupled L2 penalty (default 0).
        maximize: ascend instead of descend (structural).
    """
    owner = "adadelta"
    blocks = _decay_around(owner, lr, weight_decay, maximize, False, "adadelta",
                           scale_by_adadelta(rho, eps))
    defaults = dict(lr=blocks["lr"].hparams["lr"], rho=rho, eps=eps, weight_decay=weight_decay)
    blocked = functools.partial(_blocked.adadelta_step, maximize=maximize)
    return _classic(owner, blocks, defaults, "adadelta", ("rho", "eps"),
                    dict(maximize=maximize), blocked=blocked)


@register(paper='Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", section 7.1',
          drop_in='Adamax')
def adamax(lr: float | torch.Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False) -> Transform:
    r"""Adamax (Kingma & Ba, 2015, section 7.1), as torch.optim.Adamax.

    .. math::
        n_t = \max(\beta_2 n_{t-1}, |g_t| + \epsilon), \quad
        p_t = p_{t-1} - \frac{\eta}{1-\beta_1^t}\frac{m_t}{n_t}

    Chain: ``[scale(-1) if maximize] → add_decayed_weights → scale_by_adamax →
    scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 2e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: coupled L2 penalty (default 0).
        maximize: ascend instead of descend (structural).
    """
    owner = "adamax"
    blocks = _decay_around(owner, lr, weight_decay, maximize, False, "adamax",
                           scale_by_adamax(betas, eps))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)
    blocked = functools.partial(_blocked.adamax_step, maximize=maximize)
    return _classic(owner, blocks, defaults, "adamax", ("betas", "eps"), dict(maximize=maximize),
                    blocked=blocked)


@register(paper='Dozat, 2016, "Incorporating Nesterov Momentum into Adam"', drop_in='NAdam')
def nadam(lr: float | torch.Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
          decoupled_weight_decay: bool = False, *, maximize: bool = False,
          scalar_state_dtype: torch.dtype | None = None) -> Transform:
    r"""NAdam (Dozat, 2016), as torch.optim.NAdam; with ``decoupled_weight_decay`` NAdamW.

    :math:`p_t = p_{t-1} - \eta\, u_t` with :math:`u_t` from
    :func:`~functional_optim.transforms.scale_by_nadam`; coupled decay adds
    :math:`\lambda p` to the gradient first, decoupled decay adds :math:`\eta\lambda p` to the
    step (Loshchilov & Hutter, 2019).

    Chain: ``[scale(-1) if maximize] → [add_decayed_weights if coupled] → scale_by_nadam →
    [add_decayed_weights if decoupled] → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 2e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: ``λ`` (default 0).
        momentum_decay: ``ψ`` (default 4e-3).
        decoupled_weight_decay: AdamW-style decay (structural).
        maximize: ascend instead of descend (structural).
        scalar_state_dtype: dtype of the ``mu_product`` state (structural; ``None``:
            torch.optim's, float32 unless the default dtype is float64; see
            :mod:`functional_optim.transforms.adaptive`).
    """
    owner = "nadam"
    blocks = _decay_around(owner, lr, weight_decay, maximize, decoupled_weight_decay, "nadam",
                           scale_by_nadam(betas, eps, momentum_decay,
                                          scalar_state_dtype=scalar_state_dtype))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay, momentum_decay=momentum_decay)
    blocked = functools.partial(_blocked.nadam_step, maximize=maximize,
                                decoupled=decoupled_weight_decay)
    structural = dict(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                      scalar_state_dtype=scalar_state_dtype)
    return _classic(owner, blocks, defaults, "nadam", ("betas", "eps", "momentum_decay"),
                    structural, blocked=blocked)


@register(paper='Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond"',
          drop_in='RAdam')
def radam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
          *, maximize: bool = False) -> Transform:
    r"""RAdam (Liu et al., 2020), as torch.optim.RAdam; with ``decoupled_weight_decay`` RAdamW.

    :math:`p_t = p_{t-1} - \eta\, u_t` with :math:`u_t` from
    :func:`~functional_optim.transforms.scale_by_radam` (rectified once
    :math:`\rho_t > 5`).

    Chain: ``[scale(-1) if maximize] → [add_decayed_weights if coupled] → scale_by_radam →
    [add_decayed_weights if decoupled] → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: ``λ`` (default 0).
        decoupled_weight_decay: AdamW-style decay (structural).
        maximize: ascend instead of descend (structural).
    """
    owner = "radam"
    blocks = _decay_around(owner, lr, weight_decay, maximize, decoupled_weight_decay, "radam",
                           scale_by_radam(betas, eps))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)
    blocked = functools.partial(_blocked.radam_step, maximize=maximize,
                                decoupled=decoupled_weight_decay)
    structural = dict(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    return _classic(owner, blocks, defaults, "radam", ("betas", "eps"), structural,
                    blocked=blocked)


@register(paper=('Hinton, 2012, "Neural Networks for Machine Learning", lecture 6e; centered: '
          'Graves, 2013'),
          drop_in='RMSprop')
def rmsprop(lr: float | torch.Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0.0, momentum: float | None = 0.0, centered: bool = False, *,
            maximize: bool = False) -> Transform:
    r"""RMSprop (Hinton, 2012; centered: Graves, 2013), as torch.optim.RMSprop.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \quad
        d_t = \frac{g_t}{\sqrt{v_t - \bar g_t^2 \text{ (centered)}} + \epsilon}, \quad
        b_t = \mu b_{t-1} + d_t, \quad p_t = p_{t-1} - \eta\, b_t

    (:math:`b_t = d_t` where the momentum is the number 0). Chain: ``[scale(-1) if maximize] →
    add_decayed_weights → scale_by_rms → trace → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-2), a number, tensor or schedule.
        alpha: smoothing constant ``α`` (default 0.99).
        eps: ``ε`` (default 1e-8).
        weight_decay: coupled L2 penalty (default 0).
        momentum: ``μ`` (default 0), or ``None`` (structural: no momentum block, no buffer).
        centered: divide by the centered second moment (structural).
        maximize: ascend instead of descend (structural).
    """
    owner = "rmsprop"
    if momentum is not None:
        check_hparam(owner, "momentum", momentum, ge=0)
    body = {"rms": scale_by_rms(alpha, eps, centered)}
    if momentum is not None:
        body["momentum"] = trace(momentum)
    blocks = _decay_around(owner, lr, weight_decay, maximize, False, **body)
    defaults = dict(lr=blocks["lr"].hparams["lr"], alpha=alpha, eps=eps,
                    weight_decay=weight_decay, momentum=momentum)

    def to_inner(h):
        inner: dict = {"rms": {"alpha": h["alpha"], "eps": h["eps"]}, "lr": {"lr": h["lr"]},
                       "weight_decay": {"weight_decay": h["weight_decay"]}}
        if momentum is None:
            _no_momentum(owner, h)
        else:
            inner["momentum"] = {"momentum": h["momentum"], "dampening": 0.0}
        return inner

    blocked = functools.partial(_blocked.rmsprop_step, maximize=maximize, centered=centered,
                                has_momentum=momentum is not None)
    return _lr_folded(owner, blocks, defaults, to_inner,
                      dict(centered=centered, maximize=maximize), blocked)


@register(paper=('Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster Backpropagation '
          'Learning: The RPROP Algorithm"'),
          drop_in='Rprop')
def rprop(lr: float | torch.Tensor = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
          step_sizes: tuple[float, float] = (1e-6, 50.0), *, maximize: bool = False
          ) -> Transform:
    r"""Rprop (Riedmiller & Braun, 1993), as torch.optim.Rprop.

    Per element, the step size grows by ``η+`` while the gradient keeps its sign and shrinks by
    ``η-`` when it flips (that step is skipped); :math:`p_t = p_{t-1} - \mathrm{sign}(g_t) s_t`.
    ``lr`` is the initial step size, read at the first update (later values only matter to a
    fresh state). See :func:`~functional_optim.transforms.scale_by_rprop`.

    Chain: ``[scale(-1) if maximize] → scale_by_rprop``.

    Args:
        lr: initial step size (default 1e-2), a number or tensor.
        etas: ``(η-, η+)`` (default ``(0.5, 1.2)``).
        step_sizes: ``(s_min, s_max)`` (default ``(1e-6, 50)``).
        maximize: ascend instead of descend (structural).
    """
    owner = "rprop"
    if callable(lr) or not isinstance(lr, (Number, torch.Tensor)):
        raise HParamError(f"{owner}: lr (the initial step size) must be a Python number or a "
                          f"0-d tensor, got {type(lr).__name__} {lr!r}")
    check_hparam(owner, "lr", lr, ge=0)
    blocks: dict[str, Transform] = {}
    if maximize:
        blocks["maximize"] = scale(-1.0)
    blocks["rprop"] = scale_by_rprop(lr, etas, step_sizes)
    defaults = dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes))

    def to_inner(h):
        return {"rprop": {"init_step_size": h["lr"], "etas": h["etas"],
                          "step_sizes": h["step_sizes"]}}

    return _reparametrized(owner, chain(**blocks), defaults, to_inner,
                           dict(maximize=maximize))._replace(
        fused=_blocked.rprop_step(defaults, f"{owner} hparams", maximize=maximize))


@register(paper='Polyak & Juditsky, 1992, "Acceleration of Stochastic Approximation by '
          'Averaging"', drop_in='ASGD')
def asgd(lr: float | torch.Tensor = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
         t0: float = 1e6, weight_decay: float = 0.0, *, maximize: bool = False,
         scalar_state_dtype: torch.dtype | None = None) -> Transform:
    r"""Averaged SGD (Polyak & Juditsky, 1992), as torch.optim.ASGD.

    .. math::
        p_t = p_{t-1}(1 - \lambda\eta_{t-1}) - \eta_{t-1} g_t, \quad
        \bar p_t = \bar p_{t-1} + \mu_{t-1}(p_t - \bar p_{t-1}), \quad
        \eta_t = \frac{\gamma}{(1+\lambda\gamma t)^\alpha}, \quad
        \mu_t = \frac{1}{\max(1, t - t_0)}

    The averaged parameters are the state's ``ax`` (see
    :func:`~functional_optim.transforms.scale_by_asgd`). Chain: ``[scale(-1) if maximize] →
    add_decayed_weights → scale_by_asgd``.

    Args:
        lr: ``γ`` (default 1e-2), a number or tensor.
        lambd: decay term ``λ`` (default 1e-4).
        alpha: power for the ``η`` update (default 0.75).
        t0: step at which averaging starts (default 1e6).
        weight_decay: coupled L2 penalty (default 0).
        maximize: ascend instead of descend (structural).
        scalar_state_dtype: dtype of the ``eta``/``mu`` state (structural; ``None``:
            torch.optim's).
    """
    owner = "asgd"
    if callable(lr) or not isinstance(lr, (Number, torch.Tensor)):
        raise HParamError(f"{owner}: lr must be a Python number or a 0-d tensor, got "
                          f"{type(lr).__name__} {lr!r}")
    blocks = _decay_around(owner, lr, weight_decay, maximize, False, lr_block=False,
                           asgd=scale_by_asgd(lr, lambd, alpha, t0,
                                              scalar_state_dtype=scalar_state_dtype))
    defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay)
    blocked = functools.partial(_blocked.asgd_step, maximize=maximize,
                                rounding=_torch_scalar_dtype(scalar_state_dtype))
    return _classic(owner, blocks, defaults, "asgd", ("lr", "lambd", "alpha", "t0"),
                    dict(maximize=maximize, scalar_state_dtype=scalar_state_dtype),
                    lr_block=False, blocked=blocked)


# --------------------------------------------------------------------------------------------
# Adafactor, Muon, L-BFGS, SparseAdam (torch.optim's special algorithms)


def _number_or_tensor_lr(owner: str, lr: Any) -> None:
    if callable(lr) or not isinstance(lr, (Number, torch.Tensor)):
        raise HParamError(f"{owner}: lr must be a Python number or a 0-d tensor, got {lr!r}")
    check_hparam(owner, "lr", lr, ge=0)


@register(paper=('Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory '
          'Cost"'),
          drop_in='Adafactor')
def adafactor(lr: float | torch.Tensor = 1e-2, beta2_decay: float = -0.8,
              eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
              weight_decay: float = 0.0, *, maximize: bool = False) -> Transform:
    r"""Adafactor (Shazeer & Stern, 2018), as torch.optim.Adafactor: factored second moments for
    parameters of >= 2 dimensions, a step size relative to the parameters' RMS, update clipping
    and decoupled weight decay. See :func:`~functional_optim.transforms.scale_by_factored_rms`
    for the math (this alias is that block with torch's flat hyperparameter names).

    Args:
        lr: ``η`` (default 1e-2), a number or 0-d tensor.
        beta2_decay: ``c <= 0`` in :math:`\hat\beta_{2,t} = 1 - t^c` (default -0.8).
        eps: ``(ε1, ε2)``; ``ε1 = None`` is the dtype's machine epsilon (default
            ``(None, 1e-3)``); each may be a number or tensor at update time.
        d: clipping threshold (default 1).
        weight_decay: ``λ`` (default 0).
        maximize: ascend instead of descend (structural).
    """
    owner = "adafactor"
    _number_or_tensor_lr(owner, lr)
    inner = scale_by_factored_rms(lr, beta2_decay, eps, d, weight_decay, maximize=maximize)
    defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d,
                    weight_decay=weight_decay)

    def to_inner(h):
        eps1, eps2 = h["eps"]
        return {"lr": h["lr"], "beta2_decay": h["beta2_decay"], "eps1": eps1, "eps2": eps2,
                "d": h["d"], "weight_decay": h["weight_decay"]}

    where = f"{owner} hparams"
    blocked = _blocked.adafactor_step(defaults, where, maximize=maximize)
    return _reparametrized(owner, inner, defaults, to_inner, dict(maximize=maximize))._replace(
        fused=blocked)


@register(paper='Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"',
          drop_in='Muon')
def muon(lr: float | torch.Tensor = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
         nesterov: bool = True,
         ns_coefficients: tuple[float, float, float] = MUON_NS_COEFFICIENTS,
         eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
         ns_dtype: torch.dtype | None = torch.bfloat16) -> Transform:
    r"""Muon (Jordan et al., 2024), as torch.optim.Muon: momentum, Newton-Schulz
    orthogonalization of each 2-D update, a shape-dependent learning-rate ratio and decoupled
    weight decay.

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) g_t, \quad
        O_t = \mathrm{NS}_k(\text{nesterov} ? (1-\mu) g_t + \mu B_t : B_t), \quad
        p_t = p_{t-1} - \eta\lambda p_{t-1} - \eta\, r(A, B)\, O_t

    Chain: ``scale_by_muon → add_decayed_weights → scale_by_learning_rate``. 2-D parameters
    only (others: a ``ValueError``; use :func:`~functional_optim.partition` to give them AdamW).

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        weight_decay: decoupled ``λ`` (default 0.1).
        momentum: ``μ`` (default 0.95).
        nesterov: Nesterov momentum (structural; default True).
        ns_coefficients: ``(a, b, c)`` of the quintic iteration.
        eps: ``ε`` of the normalization (default 1e-7).
        ns_steps: Newton-Schulz iterations (structural; default 5).
        adjust_lr_fn: ``None``/``"original"`` (:math:`r = \sqrt{\max(1, A/B)}`) or
            ``"match_rms_adamw"`` (:math:`r = 0.2\sqrt{\max(A, B)}`) (structural).
        ns_dtype: precision of the iteration (structural; bfloat16 as torch; ``None``: the
            parameter's).
    """
    owner = "muon"
    blocks = _decay_around(owner, lr, weight_decay, False, True, "muon",
                           scale_by_muon(momentum, nesterov, ns_coefficients, eps, ns_steps,
                                         adjust_lr_fn, ns_dtype=ns_dtype))
    defaults = dict(lr=blocks["lr"].hparams["lr"], weight_decay=weight_decay,
                    momentum=momentum, ns_coefficients=tuple(ns_coefficients), eps=eps)

    def to_inner(h):
        return {"muon": {"momentum": h["momentum"], "ns_coefficients": h["ns_coefficients"],
                         "eps": h["eps"]}, "lr": {"lr": h["lr"]},
                "weight_decay": {"weight_decay": h["weight_decay"]}}

    structural = dict(nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                      ns_dtype=ns_dtype)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)


@register(paper=('Liu & Nocedal, 1989, "On the Limited Memory BFGS Method for Large Scale '
          'Optimization"'),
          drop_in='LBFGS')
def lbfgs(lr: float | torch.Tensor = 1, max_iter: int = 20, max_eval: int | None = None,
          tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
          line_search_fn: str | None = None) -> Transform:
    r"""L-BFGS (Nocedal, 1980; Liu & Nocedal, 1989), as torch.optim.LBFGS.

    ``update(grads, state, params, hparams, *, value=loss, value_fn=fn)``: one update is one
    ``LBFGS.step(closure)``; ``fn(params) -> (loss, grads)`` re-evaluates the loss (needed with
    ``max_iter > 1`` or a line search). Pure but host-synchronizing (no vmap/compile/capture);
    see :mod:`functional_optim.transforms.lbfgs` and the "Algorithms" page of the docs.

    Args:
        lr: ``η`` (default 1).
        max_iter: iterations per update (default 20).
        max_eval: evaluations per update (default ``max_iter * 5 // 4``).
        tolerance_grad: first-order optimality tolerance (default 1e-7).
        tolerance_change: loss/parameter change tolerance (default 1e-9).
        history_size: pairs kept (default 100).
        line_search_fn: ``None`` or ``"strong_wolfe"``.
    """
    _number_or_tensor_lr("lbfgs", lr)
    return scale_by_lbfgs(lr, max_iter, max_eval, tolerance_grad, tolerance_change,
                          history_size, line_search_fn)


@register(paper=('Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization" (lazy, on the '
          'rows a sparse gradient has)'),
          drop_in='SparseAdam')
def sparse_adam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, maximize: bool = False) -> Transform:
    r"""SparseAdam, as torch.optim.SparseAdam: Adam (Kingma & Ba, 2015) on the rows a sparse COO
    gradient has (``nn.Embedding(sparse=True)``); see
    :func:`~functional_optim.transforms.scale_by_sparse_adam`. Updates are sparse; a dense
    gradient raises torch's ``RuntimeError``.

    Args:
        lr: ``η > 0`` (default 1e-3), a number or 0-d tensor.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε > 0`` (default 1e-8).
        maximize: ascend instead of descend.
    """
    _number_or_tensor_lr("sparse_adam", lr)
    return scale_by_sparse_adam(lr, betas, eps, maximize=maximize)


# --------------------------------------------------------------------------------------------
# AllenNLP's DenseSparseAdam

__all__ += ["dense_sparse_adam"]

from .transforms.sparse import scale_by_dense_sparse_adam  # noqa: E402


@register(paper=('Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization" (dense, and '
          'lazy on the rows a sparse gradient has: AllenNLP\'s DenseSparseAdam)'),
          drop_in='DenseSparseAdam')
def dense_sparse_adam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                      eps: float = 1e-8) -> Transform:
    r"""AllenNLP's DenseSparseAdam: Adam for dense gradients and lazy Adam for sparse COO ones
    (``nn.Embedding(sparse=True)``) in one optimizer, both with the bias corrections in the step
    size and ``ε`` on the uncorrected root; see
    :func:`~functional_optim.transforms.scale_by_dense_sparse_adam`.

    Args:
        lr: ``η >= 0`` (default 1e-3), a number or 0-d tensor.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε >= 0`` (default 1e-8).
    """
    _number_or_tensor_lr("dense_sparse_adam", lr)
    return scale_by_dense_sparse_adam(lr, betas, eps)

"""torch.optim's classic set: Adagrad, Adadelta, Adamax, NAdam, RAdam, RMSprop, Rprop, ASGD."""

from __future__ import annotations

from numbers import Number
from typing import Any

import torch

from .. import _blocked, _fused
from ..base import HParamError, Transform, chain, check_hparam
from ..registry import register
from ..transforms import (
    scale,
    scale_by_adadelta,
    scale_by_adamax,
    scale_by_asgd,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
    trace,
)
from ._common import _classic, _decay_around, _lr_folded, _no_momentum, _reparametrized

__all__ = ["adagrad", "adadelta", "adamax", "nadam", "radam", "rmsprop", "rprop", "asgd"]


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
    return _classic(owner, blocks, defaults, "adadelta", ("rho", "eps"),
                    dict(maximize=maximize))


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
    return _classic(owner, blocks, defaults, "adamax", ("betas", "eps"), dict(maximize=maximize))


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
    structural = dict(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                      scalar_state_dtype=scalar_state_dtype)
    return _classic(owner, blocks, defaults, "nadam", ("betas", "eps", "momentum_decay"),
                    structural)


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
    structural = dict(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    return _classic(owner, blocks, defaults, "radam", ("betas", "eps"), structural)


def _rmsprop_hparams(owner: str, blocks: dict, alpha: Any, eps: Any, weight_decay: Any,
                     momentum: Any, **momentum_options: Any) -> tuple[dict, Any]:
    """The flat hyperparameters of an RMSprop chain (``rms``, ``momentum``, ``weight_decay``,
    ``lr`` blocks) and ``to_inner`` mapping them onto its blocks; ``momentum_options`` are
    fixed values given to the momentum block (torch's ``dampening=0``)."""
    defaults = dict(lr=blocks["lr"].hparams["lr"], alpha=alpha, eps=eps,
                    weight_decay=weight_decay, momentum=momentum)

    def to_inner(h):
        inner: dict = {"rms": {"alpha": h["alpha"], "eps": h["eps"]}, "lr": {"lr": h["lr"]},
                       "weight_decay": {"weight_decay": h["weight_decay"]}}
        if momentum is None:
            _no_momentum(owner, h)
        else:
            inner["momentum"] = {"momentum": h["momentum"], **momentum_options}
        return inner

    return defaults, to_inner


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
    defaults, to_inner = _rmsprop_hparams(owner, blocks, alpha, eps, weight_decay, momentum,
                                          dampening=0.0)
    return _lr_folded(owner, blocks, defaults, to_inner,
                      dict(centered=centered, maximize=maximize))


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

    tx = _reparametrized(owner, chain(**blocks), defaults, to_inner, dict(maximize=maximize))
    return _blocked.with_rule_steps(tx, defaults, f"{owner} hparams")


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
    return _classic(owner, blocks, defaults, "asgd", ("lr", "lambd", "alpha", "t0"),
                    dict(maximize=maximize, scalar_state_dtype=scalar_state_dtype),
                    lr_block=False)

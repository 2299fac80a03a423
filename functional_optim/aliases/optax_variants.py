r"""optax's variants of the algorithms torch.optim also names: the same names, other numbers.

optax and torch.optim give one name to different computations (issue 19). The library's name
stays torch's (:func:`~functional_optim.nadam` is torch.optim.NAdam); optax's computation is an
alias named ``optax_<optax's name>``, with a drop-in class ``Optax<torch's class name>`` in
``functional_optim.optim``. Each is a short chain of native blocks with optax's structural
options (see each block), torch's hyperparameter names (``lr``, ``betas``, ``eps``,
``weight_decay``, ``momentum``, ``alpha``) where torch has the hyperparameter, optax's
elsewhere (``eps_root``, ``decay_rate``, ``clipping_threshold``, ...), and optax's defaults
(where optax requires a learning rate, the default ``lr`` is torch's for its namesake):

======================  ==================================================================
alias                   optax's computation (what differs from torch's namesake)
======================  ==================================================================
``optax_nadam``         ``optax.nadam``/``nadamw``: Adam with Dozat's Nesterov momentum
                        (no momentum schedule, no ``mu_product``)
``optax_amsgrad``       ``optax.amsgrad``: the maximum of the *bias-corrected* second moment
``optax_adagrad``       ``optax.adagrad``: ``ε`` inside the root, :math:`s_0 = 0.1`, no
                        ``lr_decay``
``optax_rmsprop``       ``optax.rmsprop``: ``ε`` inside the root, decay 0.9, optional bias
                        correction, initial scale, Nesterov momentum after the learning rate
``optax_radam``         ``optax.radam``: ``ε`` outside the corrected root, switch at
                        :math:`\rho_t \ge 5`, ``eps_root``, Nesterov
``optax_rprop``         ``optax.rprop``: the previous step applied (optax 0.2.8's lag),
                        unclipped step sizes where the sign product is 0
``optax_adafactor``     ``optax.adafactor``: factored along the two largest dimensions from
                        128 elements, no relative step, ``decay_offset``, float32 momentum
======================  ==================================================================

optax's names that compute what torch's namesake computes map onto torch's alias or onto
blocks directly (``optax.sgd`` is :func:`~functional_optim.sgd` with ``momentum=None`` for
optax's ``None``, and :func:`~functional_optim.transforms.trace` with ``accumulator_dtype``;
``optax.adam``/``adamw`` are :func:`~functional_optim.transforms.scale_by_adam` with
``eps_root``, ``mu_dtype``, ``nesterov``; ``optax.adadelta`` and ``optax.adamax`` are torch's
blocks); ``functional_optim.compat.optax`` maps optax's names onto these.

Complex parameters are pairs of reals here, as in torch.optim (optax's second moments take
:math:`|g|^2` of a complex gradient instead).
"""

from __future__ import annotations

import torch

from ..base import HParamError, Transform, chain, check_hparam
from ..registry import register
from ..transforms import (
    scale,
    scale_by_adam,
    scale_by_factored_rms,
    scale_by_radam,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
    trace,
)
from ._common import (
    _classic,
    _decay_around,
    _lr_folded,
    _no_momentum,
    _number_or_tensor_lr,
    _reparametrized,
)
from .classic import _rmsprop_hparams

__all__ = ["optax_nadam", "optax_amsgrad", "optax_adagrad", "optax_rmsprop", "optax_radam",
           "optax_rprop", "optax_adafactor"]

_ADAM_KEYS = ("betas", "eps", "eps_root")


def _adam_like(owner: str, lr, weight_decay, decoupled_weight_decay: bool, maximize: bool,
               block: Transform, structural: dict) -> Transform:
    """``[maximize] → [coupled decay] → block → [decoupled decay] → lr`` with torch's flat
    hyperparameters and the block's ``betas``, ``eps``, ``eps_root``."""
    blocks = _decay_around(owner, lr, weight_decay, maximize, decoupled_weight_decay, "adam",
                           block)
    defaults = dict(lr=blocks["lr"].hparams["lr"],
                    **{k: block.hparams[k] for k in _ADAM_KEYS}, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "adam", _ADAM_KEYS,
                    dict(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                         **structural))


@register(paper=('Dozat, 2016, "Incorporating Nesterov Momentum into Adam", as optax.nadam '
                 "(Adam with Nesterov momentum)"),
          drop_in="OptaxNAdam")
def optax_nadam(lr: float | torch.Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, eps_root: float = 0.0, weight_decay: float = 0.0,
                decoupled_weight_decay: bool = False, *, maximize: bool = False,
                mu_dtype: torch.dtype | None = None) -> Transform:
    r"""NAdam as optax computes it (``optax.nadam``; ``optax.nadamw`` with
    ``decoupled_weight_decay``): Adam whose bias-corrected first moment is Dozat's Nesterov
    momentum,

    .. math::
        \hat m_t = \frac{\beta_1 m_t}{1-\beta_1^{t+1}} + \frac{(1-\beta_1) g_t}{1-\beta_1^t},
        \quad p_t = p_{t-1} - \eta\,\frac{\hat m_t}{\sqrt{v_t / (1-\beta_2^t) +
        \epsilon_{root}} + \epsilon}

    torch.optim.NAdam (:func:`~functional_optim.nadam`) instead warms the momentum up with a
    schedule :math:`\mu_t`. Chain: ``[scale(-1) if maximize] → [add_decayed_weights if
    coupled] → scale_by_adam(nesterov=True) → [add_decayed_weights if decoupled] →
    scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 2e-3, torch.optim.NAdam's), a number, tensor or schedule.
        betas: ``(β1, β2)`` (optax's ``b1``, ``b2``; default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
        weight_decay: ``λ`` (default 0; optax's ``nadamw`` defaults to 1e-4).
        decoupled_weight_decay: optax's ``nadamw`` (structural).
        maximize: ascend instead of descend (structural).
        mu_dtype: dtype of the first moment's state (structural; optax's ``mu_dtype``).
    """
    block = scale_by_adam(betas, eps, eps_root, nesterov=True, mu_dtype=mu_dtype)
    return _adam_like("optax_nadam", lr, weight_decay, decoupled_weight_decay, maximize, block,
                      dict(mu_dtype=mu_dtype))


_CORRECTIONS = {(True, True): "moments", (True, False): "first_moment",
                (False, True): "second_moment", (False, False): "none"}


@register(paper=('Reddi et al., 2018, "On the Convergence of Adam and Beyond", as '
                 "optax.amsgrad (the maximum of the bias-corrected second moment)"),
          drop_in="OptaxAMSGrad")
def optax_amsgrad(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8, eps_root: float = 0.0, weight_decay: float = 0.0,
                  decoupled_weight_decay: bool = False, *, maximize: bool = False,
                  bias_correction_mu: bool = True, bias_correction_nu: bool = True,
                  mu_dtype: torch.dtype | None = None) -> Transform:
    r"""AMSGrad as optax computes it (``optax.amsgrad``): the running maximum of the
    *bias-corrected* second moment,

    .. math::
        \hat v_t = \max\big(\hat v_{t-1}, v_t / (1-\beta_2^t)\big), \quad
        p_t = p_{t-1} - \eta\,\frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t + \epsilon_{root}}
        + \epsilon}

    where torch.optim.Adam(amsgrad=True) keeps the maximum of the raw :math:`v_t` and corrects
    it. ``bias_correction_mu``/``bias_correction_nu`` drop either correction (both off: Reddi
    et al.'s algorithm). Chain: ``[scale(-1) if maximize] → [add_decayed_weights if coupled] →
    scale_by_adam(amsgrad=True, amsgrad_corrected=True) → [add_decayed_weights if decoupled]
    → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
        weight_decay: ``λ`` (default 0; optax's amsgrad has none).
        decoupled_weight_decay: AdamW-style decay (structural).
        maximize: ascend instead of descend (structural).
        bias_correction_mu: correct the first moment (structural; default True).
        bias_correction_nu: correct the second moment before the maximum (structural;
            default True).
        mu_dtype: dtype of the first moment's state (structural).
    """
    correction = _CORRECTIONS[bool(bias_correction_mu), bool(bias_correction_nu)]
    block = scale_by_adam(betas, eps, eps_root, amsgrad=True, bias_correction=correction,
                          amsgrad_corrected=True, mu_dtype=mu_dtype)
    return _adam_like("optax_amsgrad", lr, weight_decay, decoupled_weight_decay, maximize,
                      block, dict(bias_correction_mu=bias_correction_mu,
                                  bias_correction_nu=bias_correction_nu, mu_dtype=mu_dtype))


@register(paper=('Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online Learning '
                 'and Stochastic Optimization", as optax.adagrad (eps inside the root)'),
          drop_in="OptaxAdagrad")
def optax_adagrad(lr: float | torch.Tensor = 1e-2, initial_accumulator_value: float = 0.1,
                  eps: float = 1e-7, weight_decay: float = 0.0, *,
                  maximize: bool = False) -> Transform:
    r"""Adagrad as optax computes it (``optax.adagrad``): ``ε`` inside the root, an
    accumulator that starts at 0.1, no learning-rate decay,

    .. math::
        s_t = s_{t-1} + g_t^2, \quad
        p_t = p_{t-1} - \eta\,\frac{g_t}{\sqrt{s_t + \epsilon}} \ (0 \text{ where } s_t = 0)

    Chain: ``[scale(-1) if maximize] → add_decayed_weights → scale_by_rss(eps_in_sqrt=True) →
    scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-2, torch.optim.Adagrad's), a number, tensor or schedule.
        initial_accumulator_value: :math:`s_0` (structural: read by ``init``; default 0.1).
        eps: ``ε`` (default 1e-7).
        weight_decay: coupled L2 penalty (default 0; optax's adagrad has none).
        maximize: ascend instead of descend (structural).
    """
    owner = "optax_adagrad"
    blocks = _decay_around(owner, lr, weight_decay, maximize, False, "rss",
                           scale_by_rss(0.0, initial_accumulator_value, eps, eps_in_sqrt=True))
    defaults = dict(lr=blocks["lr"].hparams["lr"], eps=eps, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "rss", ("eps",),
                    dict(initial_accumulator_value=initial_accumulator_value,
                         maximize=maximize))


@register(paper=('Hinton, 2012, "Neural Networks for Machine Learning", lecture 6e; centered: '
                 'Graves, 2013; bias correction: Ziyin et al., 2021, "LaProp"; as optax.rmsprop'),
          drop_in="OptaxRMSprop")
def optax_rmsprop(lr: float | torch.Tensor = 1e-2, alpha: float = 0.9, eps: float = 1e-8,
                  weight_decay: float = 0.0, momentum: float | None = None,
                  centered: bool = False, *, nesterov: bool = False, eps_in_sqrt: bool = True,
                  bias_correction: bool = False, initial_scale: float = 0.0,
                  maximize: bool = False) -> Transform:
    r"""RMSprop as optax computes it (``optax.rmsprop``): by default ``ε`` inside the root and
    a decay of 0.9,

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \quad
        d_t = -\eta\,\frac{g_t}{\sqrt{v_t - \bar g_t^2 \text{ (centered)} + \epsilon}}, \quad
        b_t = \mu b_{t-1} + d_t, \quad p_t = p_{t-1} + (d_t + \mu b_t \text{ if nesterov
        else } b_t)

    The momentum sums steps already scaled by the learning rate (optax's order: a scheduled
    ``lr`` acts on each step as it is taken, where torch.optim.RMSprop scales the momentum
    buffer by the current one). Chain: ``[scale(-1) if maximize] → add_decayed_weights →
    scale_by_rms(eps_in_sqrt=True, ...) → scale_by_learning_rate → [trace]``.

    Args:
        lr: ``η`` (default 1e-2, torch.optim.RMSprop's), a number, tensor or schedule.
        alpha: the decay ``α`` (optax's ``decay``; default 0.9).
        eps: ``ε`` (default 1e-8).
        weight_decay: coupled L2 penalty (default 0; optax's rmsprop has none).
        momentum: ``μ``, or ``None`` (default; structural: no momentum block, no buffer).
        centered: divide by the centered second moment (structural).
        nesterov: Nesterov momentum (structural).
        eps_in_sqrt: ``ε`` inside the root (structural; default True, optax's).
        bias_correction: correct the running means by :math:`1-\alpha^t` (structural).
        initial_scale: :math:`v_0` (structural: read by ``init``; default 0).
        maximize: ascend instead of descend (structural).
    """
    owner = "optax_rmsprop"
    if momentum is not None:
        check_hparam(owner, "momentum", momentum, ge=0)
    blocks = _decay_around(owner, lr, weight_decay, maximize, False, "rms",
                           scale_by_rms(alpha, eps, centered, eps_in_sqrt=eps_in_sqrt,
                                        bias_correction=bias_correction,
                                        initial_scale=initial_scale))
    if momentum is not None:
        blocks["momentum"] = trace(momentum, nesterov=nesterov)
    elif nesterov:
        raise HParamError(f"{owner}: nesterov=True needs a momentum (got None)")
    defaults, to_inner = _rmsprop_hparams(owner, blocks, alpha, eps, weight_decay, momentum)
    structural = dict(centered=centered, nesterov=nesterov, eps_in_sqrt=eps_in_sqrt,
                      bias_correction=bias_correction, initial_scale=initial_scale,
                      maximize=maximize)
    if momentum is None:  # the learning rate is the last block: fold it into the step
        return _lr_folded(owner, blocks, defaults, to_inner, structural)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)


@register(paper=('Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond", '
                 "as optax.radam"),
          drop_in="OptaxRAdam")
def optax_radam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, eps_root: float = 0.0, threshold: float = 5.0,
                weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
                nesterov: bool = False, maximize: bool = False) -> Transform:
    r"""RAdam as optax computes it (``optax.radam``): ``ε`` added to the *bias-corrected* root
    and the rectified step taken once :math:`\rho_t \ge` ``threshold``,

    .. math::
        p_t = p_{t-1} - \eta \begin{cases}
            r_t\,\hat m_t / (\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon)
            & \rho_t \ge \tau \\ \hat m_t & \text{otherwise}\end{cases}

    (torch.optim.RAdam adds ``ε`` to :math:`\sqrt{v_t}` and switches at :math:`\rho_t > 5`;
    see :func:`~functional_optim.transforms.scale_by_radam`). Chain: ``[scale(-1) if maximize]
    → [add_decayed_weights if coupled] → scale_by_radam(variant="optax") →
    [add_decayed_weights if decoupled] → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
        threshold: ``τ`` (default 5).
        weight_decay: ``λ`` (default 0; optax's radam has none).
        decoupled_weight_decay: AdamW-style decay (structural).
        nesterov: Dozat's Nesterov first moment (structural).
        maximize: ascend instead of descend (structural).
    """
    owner = "optax_radam"
    blocks = _decay_around(owner, lr, weight_decay, maximize, decoupled_weight_decay, "radam",
                           scale_by_radam(betas, eps, threshold, eps_root=eps_root,
                                          nesterov=nesterov, variant="optax"))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    eps_root=eps_root, threshold=threshold, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "radam", ("betas", "eps", "eps_root", "threshold"),
                    dict(decoupled_weight_decay=decoupled_weight_decay, nesterov=nesterov,
                         maximize=maximize))


@register(paper=('Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster Backpropagation '
                 'Learning: The RPROP Algorithm", as optax.rprop (0.2.8)'),
          drop_in="OptaxRprop")
def optax_rprop(lr: float | torch.Tensor = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
                step_sizes: tuple[float, float] = (1e-6, 50.0), *,
                maximize: bool = False) -> Transform:
    r"""Rprop as optax computes it (``optax.rprop``; ``eta_minus``, ``eta_plus`` are
    ``etas``, ``min_step_size``, ``max_step_size`` are ``step_sizes``): each step applies the
    step computed at the previous one (so the first update is 0), and a step size is clipped
    to ``step_sizes`` only when it moves. See
    :func:`~functional_optim.transforms.scale_by_rprop` (``variant="optax"``).

    Chain: ``[scale(-1) if maximize] → scale_by_rprop(variant="optax")``.

    Args:
        lr: the initial step size (default 1e-2), a number or tensor.
        etas: ``(η-, η+)`` (default ``(0.5, 1.2)``).
        step_sizes: ``(s_min, s_max)`` (default ``(1e-6, 50)``).
        maximize: ascend instead of descend (structural).
    """
    owner = "optax_rprop"
    _number_or_tensor_lr(owner, lr)
    blocks: dict[str, Transform] = {"maximize": scale(-1.0)} if maximize else {}
    blocks["rprop"] = scale_by_rprop(lr, etas, step_sizes, variant="optax")
    defaults = dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes))

    def to_inner(h):
        return {"rprop": {"init_step_size": h["lr"], "etas": h["etas"],
                          "step_sizes": h["step_sizes"]}}

    return _reparametrized(owner, chain(**blocks), defaults, to_inner, dict(maximize=maximize))


@register(paper=('Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory '
                 'Cost", as optax.adafactor'),
          drop_in="OptaxAdafactor")
def optax_adafactor(lr: float | torch.Tensor = 1.0, min_dim_size_to_factor: int = 128,
                    decay_rate: float = 0.8, decay_offset: float = 0.0,
                    multiply_by_parameter_scale: bool = True,
                    clipping_threshold: float | None = 1.0, momentum: float | None = None,
                    momentum_dtype: torch.dtype | None = torch.float32,
                    weight_decay: float = 0.0, eps: float = 1e-30, factored: bool = True, *,
                    maximize: bool = False) -> Transform:
    r"""Adafactor as optax computes it (``optax.adafactor``):
    :func:`~functional_optim.transforms.scale_by_factored_rms` with ``variant="optax"`` and a
    fixed step size (no relative step),

    .. math::
        \hat\beta_{2,t} = 1 - (t - t_0)^{-c}, \quad
        U_t = \frac{G_t}{\sqrt{\hat V_t}}, \quad
        M_t = \mu M_{t-1} + (1-\mu)\,\eta\,\max(10^{-3}, \operatorname{RMS}(p_{t-1}))
              \frac{U_t}{\max(1, \operatorname{RMS}(U_t)/d)}, \quad
        p_t = p_{t-1} - M_t - \lambda p_{t-1}

    with :math:`\hat V_t` the second moments of :math:`G_t^2 + \epsilon`, factored along the two
    largest dimensions of a leaf where both have at least ``min_dim_size_to_factor`` elements
    (:math:`M_t` is the scaled update itself without ``momentum``; the parameter scale only
    with ``multiply_by_parameter_scale``; the clipping only with a ``clipping_threshold``).

    optax's ``learning_rate=None`` (no learning-rate block) is ``lr=1`` (the default) and its
    ``weight_decay_rate=None`` is ``weight_decay=0``; its ``dtype_momentum`` is
    ``momentum_dtype`` (float32 by default, as optax). ``clipping_threshold`` may be ``None``
    at update time (no clipping). For a schedule, use
    :func:`~functional_optim.inject_hparams`.

    Args:
        lr: ``η`` (default 1), a number or 0-d tensor.
        min_dim_size_to_factor: factor only where both dimensions have at least this many
            elements (structural; default 128).
        decay_rate: ``c`` (default 0.8).
        decay_offset: :math:`t_0`, for fine-tuning: the step count where it starts (default 0).
        multiply_by_parameter_scale: scale the step by the parameters' RMS (structural).
        clipping_threshold: ``d``, or ``None``: no clipping (default 1).
        momentum: ``μ`` of the running mean of the updates, or ``None`` (default; structural:
            no momentum, no ``exp_avg``).
        momentum_dtype: dtype of the momentum state (structural; default float32).
        weight_decay: ``λ`` (optax's ``weight_decay_rate``; default 0), not scaled by ``lr``.
        eps: ``ε`` added to the squared gradients (default 1e-30).
        factored: factor the second moments (structural; default True).
        maximize: ascend instead of descend (structural).
    """
    owner = "optax_adafactor"
    _number_or_tensor_lr(owner, lr)
    check_hparam(owner, "decay_rate", decay_rate, ge=0)
    if momentum is not None:
        check_hparam(owner, "momentum", momentum, ge=0, le=1)
    inner = scale_by_factored_rms(
        lr, -decay_rate, (eps, 1e-3), clipping_threshold, weight_decay,
        maximize=maximize, variant="optax", relative_step=False,
        scale_parameter=multiply_by_parameter_scale, beta1=momentum, decay_offset=decay_offset,
        factored=factored, min_dim_size_to_factor=min_dim_size_to_factor,
        momentum_dtype=momentum_dtype)
    defaults = dict(lr=lr, decay_rate=decay_rate, decay_offset=decay_offset,
                    clipping_threshold=clipping_threshold, momentum=momentum,
                    weight_decay=weight_decay, eps=eps)

    def to_inner(h):
        inner_h = {"lr": h["lr"], "beta2_decay": -h["decay_rate"], "eps1": h["eps"],
                   "d": h["clipping_threshold"], "weight_decay": h["weight_decay"],
                   "decay_offset": h["decay_offset"]}
        if momentum is None:
            _no_momentum(owner, h)
        else:
            inner_h["beta1"] = h["momentum"]
        return inner_h

    return _reparametrized(owner, inner, defaults, to_inner, dict(
        min_dim_size_to_factor=min_dim_size_to_factor,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        momentum_dtype=momentum_dtype, factored=factored, maximize=maximize))


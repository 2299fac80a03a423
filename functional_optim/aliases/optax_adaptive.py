"""optax's Adam-like algorithms that torch.optim lacks, with torch's hyperparameter names:
AdaBelief, Yogi, NovoGrad, Adan, SM3, optimistic Adam, AdamaxW and optax's NAdamW (the others
of the family, and its helpers, are in :mod:`functional_optim.aliases.optax_core`).
"""

from __future__ import annotations

import torch

from ..base import Transform, check_betas, check_hparam
from ..registry import register
from ..transforms import scale_by_adam, scale_by_adamax, scale_by_learning_rate
from ..transforms.belief import check_beta_triple, scale_by_adan, scale_by_belief, scale_by_yogi
from ..transforms.optimistic import scale_by_optimistic_gradient
from ..transforms.sublinear import scale_by_novograd, scale_by_sm3
from ._common import _check_lr, _classic, _lr_folded
from .optax_core import Mask, _decoupled, _lr_only

__all__ = ["adabelief", "yogi", "novograd", "adan", "sm3", "optimistic_adam", "adamaxw",
           "nadamw"]


@register(paper=('Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief '
                 'in Observed Gradients"'), drop_in="AdaBelief")
def adabelief(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-16, eps_root: float = 1e-16, *,
              nesterov: bool = False) -> Transform:
    r"""AdaBelief (Zhuang et al., 2020), as optax's ``adabelief``:
    :math:`p_t = p_{t-1} - \eta\,\hat m_t / (\sqrt{\hat s_t} + \epsilon)` with the second
    moment of the prediction error :math:`g_t - m_t` (see
    :func:`~functional_optim.transforms.scale_by_belief`).

    Chain: ``scale_by_belief → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-16, optax's).
        eps_root: ``ε_root`` (default 1e-16, optax's).
        nesterov: Nesterov's first moment (structural).
    """
    return _lr_only("adabelief", lr,
                    {"adabelief": scale_by_belief(betas, eps, eps_root, nesterov=nesterov)},
                    dict(betas=tuple(betas), eps=eps, eps_root=eps_root),
                    dict(nesterov=nesterov))


@register(paper='Zaheer et al., 2018, "Adaptive Methods for Nonconvex Optimization" (Yogi)',
          drop_in="Yogi")
def yogi(lr: float | torch.Tensor = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-3) -> Transform:
    r"""Yogi (Zaheer et al., 2018), as optax's ``yogi``: Adam whose second moment moves by
    :math:`-(1-\beta_2)\operatorname{sign}(v - g^2) g^2` (see
    :func:`~functional_optim.transforms.scale_by_yogi`; both moments start at 1e-6).

    Chain: ``scale_by_yogi → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-2, the paper's), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-3).
    """
    return _lr_only("yogi", lr, {"yogi": scale_by_yogi(betas, eps)},
                    dict(betas=tuple(betas), eps=eps), {})


@register(paper=('Daskalakis et al., 2018, "Training GANs with Optimism" (optimistic Adam); '
                 'Dozat, 2016 (Nesterov)'), drop_in="OptimisticAdam")
def optimistic_adam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, eps_root: float = 0.0, alpha: float = 1.0,
                    beta: float = 1.0, *, nesterov: bool = True,
                    mu_dtype: torch.dtype | None = None) -> Transform:
    r"""Optimistic Adam, as optax's ``optimistic_adam_v2``: Adam's step :math:`a_t` (with
    Nesterov's first moment by default), then :math:`p_t = p_{t-1} - \eta((\alpha+\beta) a_t -
    \beta a_{t-1})`.

    Chain: ``scale_by_adam(nesterov) → scale_by_optimistic_gradient →
    scale_by_learning_rate``. (optax's deprecated ``optimistic_adam(learning_rate, optimism)``
    is this with ``lr=1``, ``alpha=learning_rate``, ``beta=optimism``.)

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
        alpha: ``α`` (default 1).
        beta: ``β`` (default 1).
        nesterov: Nesterov's first moment (structural; default True, optax's).
        mu_dtype: dtype of the first moment's state (structural; optax's ``mu_dtype``).
    """
    owner = "optimistic_adam"
    check_betas(owner, betas)
    adam = scale_by_adam(betas, eps, eps_root, nesterov=nesterov, mu_dtype=mu_dtype)
    return _lr_only(owner, lr, {"adam": adam,
                                "optimistic": scale_by_optimistic_gradient(alpha, beta)},
                    dict(betas=tuple(betas), eps=eps, eps_root=eps_root, alpha=alpha,
                         beta=beta), dict(nesterov=nesterov, mu_dtype=mu_dtype))


@register(paper=('Kingma & Ba, 2015 (Adamax); Loshchilov & Hutter, 2019, "Decoupled Weight Decay '
                 'Regularization"'), drop_in="AdamaxW")
def adamaxw(lr: float | torch.Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-8, weight_decay: float = 1e-4, *, mask: Mask = None) -> Transform:
    r"""Adamax with decoupled weight decay, as optax's ``adamaxw``:
    :math:`p_t = p_{t-1} - \eta\,(\hat m_t / n_t + \lambda p_{t-1})` with torch's Adamax
    moments (:func:`~functional_optim.transforms.scale_by_adamax`).

    Chain: ``scale_by_adamax → add_decayed_weights(mask) → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 2e-3, torch's Adamax's), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled ``λ`` (default 1e-4, optax's).
        mask: where to decay (structural).
    """
    owner = "adamaxw"
    blocks = _decoupled(owner, lr, weight_decay, mask, "adamax", scale_by_adamax(betas, eps))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "adamax", ("betas", "eps"), dict(mask=mask))


@register(paper=('Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; Loshchilov & '
                 'Hutter, 2019 (decoupled decay)'), drop_in="NAdamW")
def nadamw(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-8, eps_root: float = 0.0, weight_decay: float = 1e-4, *,
           mask: Mask = None, mu_dtype: torch.dtype | None = None) -> Transform:
    r"""NAdamW as optax computes it (``optax.nadamw``; ``weight_decay=0`` is ``optax.nadam``):
    AdamW with Nesterov's first moment,
    :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`,
    :math:`p_t = p_{t-1} - \eta(\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon) +
    \lambda p_{t-1})`. Not torch.optim.NAdam(W) (:func:`~functional_optim.nadam`: a momentum
    schedule).

    Chain: ``scale_by_adam(nesterov=True) → add_decayed_weights(mask) →
    scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
        weight_decay: decoupled ``λ`` (default 1e-4, optax's).
        mask: where to decay (structural).
        mu_dtype: dtype of the first moment's state (structural; optax's ``mu_dtype``).
    """
    owner = "nadamw"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    blocks = _decoupled(owner, lr, weight_decay, mask, "adam",
                        scale_by_adam(betas, eps, eps_root, nesterov=True, mu_dtype=mu_dtype))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    eps_root=eps_root, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "adam", ("betas", "eps", "eps_root"),
                    dict(mask=mask, mu_dtype=mu_dtype))


@register(paper=('Ginsburg et al., 2019, "Stochastic Gradient Methods with Layer-wise Adaptive '
                 'Moments for Training of Deep Networks" (NovoGrad)'), drop_in="NovoGrad")
def novograd(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.25),
             eps: float = 1e-6, eps_root: float = 0.0, weight_decay: float = 0.0) -> Transform:
    r"""NovoGrad (Ginsburg et al., 2019), as optax's ``novograd``: momentum on gradients
    normalized by a per-layer second moment, the weight decay inside the momentum (see
    :func:`~functional_optim.transforms.scale_by_novograd`).

    Chain: ``scale_by_novograd → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.25)``).
        eps: ``ε`` (default 1e-6, optax's).
        eps_root: ``ε_root`` (default 0).
        weight_decay: ``λ`` (default 0).
    """
    return _lr_only("novograd", lr,
                    {"novograd": scale_by_novograd(betas, eps, eps_root, weight_decay)},
                    dict(betas=tuple(betas), eps=eps, eps_root=eps_root,
                         weight_decay=weight_decay), {})


@register(paper=('Xie et al., 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster '
                 'Optimizing Deep Models"'), drop_in="Adan")
def adan(lr: float | torch.Tensor = 1e-3,
         betas: tuple[float, float, float] = (0.98, 0.92, 0.99), eps: float = 1e-8,
         eps_root: float = 1e-8, weight_decay: float = 0.0, *, mask: Mask = None) -> Transform:
    r"""Adan (Xie et al., 2022), as optax's ``adan``: the step of
    :func:`~functional_optim.transforms.scale_by_adan` plus decoupled decay,
    :math:`p_t = p_{t-1} - \eta\,(u_t + \lambda p_{t-1})` (optax's decay, not the paper's
    proximal :math:`p/(1+\eta\lambda)`).

    Chain: ``scale_by_adan → add_decayed_weights(mask) → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2, β3)`` (default ``(0.98, 0.92, 0.99)``).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 1e-8, optax's).
        weight_decay: decoupled ``λ`` (default 0).
        mask: where to decay (structural).
    """
    owner = "adan"
    check_beta_triple(owner, betas)
    blocks = _decoupled(owner, lr, weight_decay, mask, "adan",
                        scale_by_adan(betas, eps, eps_root))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    eps_root=eps_root, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "adan", ("betas", "eps", "eps_root"),
                    dict(mask=mask))


@register(paper='Anil et al., 2019, "Memory-Efficient Adaptive Optimization" (SM3)',
          drop_in="SM3")
def sm3(lr: float | torch.Tensor = 1e-3, momentum: float = 0.9) -> Transform:
    r"""SM3 (Anil et al., 2019), as optax's ``sm3``: Adagrad-like scaling by a cover of
    per-dimension accumulators (memory :math:`\sum_i n_i` per parameter), then momentum (see
    :func:`~functional_optim.transforms.scale_by_sm3`, with :math:`\beta_2 = 1`).

    Chain: ``scale_by_sm3 → scale_by_learning_rate``. Real parameters only.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        momentum: ``β1`` of the momentum (default 0.9).
    """
    owner = "sm3"
    _check_lr(owner, lr)
    check_hparam(owner, "momentum", momentum, ge=0, lt=1)
    blocks = {"sm3": scale_by_sm3((momentum, 1.0)), "lr": scale_by_learning_rate(lr)}
    defaults = dict(lr=blocks["lr"].hparams["lr"], momentum=momentum)

    def to_inner(h):
        return {"sm3": {"betas": (h["momentum"], 1.0)}, "lr": {"lr": h["lr"]}}

    return _lr_folded(owner, blocks, defaults, to_inner, {})


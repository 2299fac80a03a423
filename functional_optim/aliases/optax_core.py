"""optax's core algorithms that torch.optim lacks, with torch's hyperparameter names: the
sign-based, layer-wise (trust ratio), noisy, Polyak and optimistic ones (the Adam-like ones are
in :mod:`functional_optim.aliases.optax_adaptive`).

Each alias is optax's chain of the same blocks (``optax/_src/alias.py``), with one flat hparams
dict: ``lr`` (optax's ``learning_rate``), ``betas`` (``(b1, b2)``; Adan's three), ``eps``,
``weight_decay``, ``momentum``; optax's other names where torch has none. optax requires a
learning rate; the default ``lr`` here is the one its paper or reference implementation
uses, else torch's usual 1e-3. The drop-in ``torch.optim.Optimizer`` class of each is made from
its registry entry (``drop_in``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as _tree
from ..base import Transform, chain, check_betas, check_hparam
from ..combinators import ema, masked
from ..registry import register
from ..transforms import add_decayed_weights, scale_by_adam, scale_by_learning_rate, sign, trace
from ..transforms.lion import scale_by_lion
from ..transforms.noise import add_noise
from ..transforms.optimistic import scale_by_optimistic_gradient
from ..transforms.polyak import scale_by_polyak
from ..transforms.trust_ratio import scale_by_trust_ratio
from ._common import _check_lr, _classic, _lr_folded, _number_or_tensor_lr, _reparametrized

__all__ = ["lion", "sign_sgd", "signum", "lamb", "lars", "fromage", "noisy_sgd", "polyak_sgd",
           "optimistic_gradient_descent"]

Mask = Any | Callable[[Any], Any] | None


def _decoupled(owner: str, lr: Any, weight_decay: Any, mask: Mask, name: str,
               block: Transform, *after: tuple[str, Transform]) -> dict:
    """optax's ``chain(block, add_decayed_weights(weight_decay, mask), *after,
    scale_by_learning_rate(lr))`` as named blocks (the decay scaled by the lr: AdamW's)."""
    _check_lr(owner, lr)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    return {name: block, "weight_decay": add_decayed_weights(weight_decay, mask), **dict(after),
            "lr": scale_by_learning_rate(lr)}


def _lr_only(owner: str, lr: Any, blocks: dict, defaults: dict, structural: dict) -> Transform:
    """``chain(**blocks, lr=scale_by_learning_rate(lr))`` with the flat ``defaults``: each
    block takes the keys of ``defaults`` that are its hparams (``lr`` the learning rate's)."""
    _check_lr(owner, lr)
    blocks = {**blocks, "lr": scale_by_learning_rate(lr)}
    defaults = {"lr": blocks["lr"].hparams["lr"], **defaults}
    keys = {name: [k for k in defaults if k in b.hparams] for name, b in blocks.items()}

    def to_inner(h):
        return {name: {k: h[k] for k in ks} for name, ks in keys.items()}

    return _lr_folded(owner, blocks, defaults, to_inner, structural)


@register(paper='Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms" (Lion)',
          drop_in="Lion")
def lion(lr: float | torch.Tensor = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
         weight_decay: float = 1e-3, *, mask: Mask = None,
         mu_dtype: torch.dtype | None = None) -> Transform:
    r"""Lion (Chen et al., 2023), as optax's ``lion``.

    .. math::
        u_t = \operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t), \quad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t, \quad
        p_t = p_{t-1} - \eta\,(u_t + \lambda p_{t-1})

    Chain: ``scale_by_lion → add_decayed_weights(mask) → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-4: the paper's advice, 3-10 times below AdamW's), a number,
            tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.99)``).
        weight_decay: decoupled ``λ`` (default 1e-3, optax's).
        mask: where to decay (structural; see
            :func:`~functional_optim.transforms.add_decayed_weights`).
        mu_dtype: dtype of the momentum (structural; default the parameter's).
    """
    owner = "lion"
    check_betas(owner, betas)
    blocks = _decoupled(owner, lr, weight_decay, mask, "lion",
                        scale_by_lion(betas, mu_dtype=mu_dtype))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "lion", ("betas",),
                    dict(mask=mask, mu_dtype=mu_dtype))


@register(paper=('You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT '
                 'in 76 minutes" (LAMB)'), drop_in="LAMB")
def lamb(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-6, eps_root: float = 0.0, weight_decay: float = 0.0, *,
         mask: Mask = None) -> Transform:
    r"""LAMB (You et al., 2020), as optax's ``lamb``: Adam's step plus decoupled decay, scaled
    per layer by its trust ratio.

    .. math::
        r_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon} + \lambda p_{t-1},
        \qquad p_t = p_{t-1} - \eta\, \frac{\|p_{t-1}\|}{\|r_t\|}\, r_t

    (ratio 1 where either norm is 0). Chain: ``scale_by_adam → add_decayed_weights(mask) →
    scale_by_trust_ratio → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-6, optax's).
        eps_root: ``ε_root`` (default 0).
        weight_decay: ``λ`` (default 0).
        mask: where to decay (structural).
    """
    owner = "lamb"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    blocks = _decoupled(owner, lr, weight_decay, mask, "adam",
                        scale_by_adam(betas, eps, eps_root),
                        ("trust_ratio", scale_by_trust_ratio()))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    eps_root=eps_root, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "adam", ("betas", "eps", "eps_root"),
                    dict(mask=mask), reduce=True)


def _as_mask(mask: Any) -> Mask:
    """optax's ``MaskOrFn`` with its ``True`` (everything) and ``False`` (nothing)."""
    if mask is True:
        return None
    if mask is False:
        return _nothing
    return mask


def _nothing(params: Any) -> Any:
    return _tree.map(lambda _: False, params)


@register(paper='You, Gitman & Ginsburg, 2017, "Large Batch Training of Convolutional Networks" '
                '(LARS)', drop_in="LARS")
def lars(lr: float | torch.Tensor = 1e-3, weight_decay: float = 0.0,
         trust_coefficient: float = 1e-3, eps: float = 0.0, momentum: float = 0.9,
         nesterov: bool = False, *, weight_decay_mask: Any = True,
         trust_ratio_mask: Any = True) -> Transform:
    r"""LARS (You et al., 2017), as optax's ``lars``.

    .. math::
        r_t = g_t + \lambda p_{t-1}, \quad
        r_t \leftarrow \frac{c\,\|p_{t-1}\|}{\|r_t\| + \epsilon}\, r_t, \quad
        b_t = \mu b_{t-1} + \eta r_t\ (b_1 = \eta r_1), \quad
        p_t = p_{t-1} - (\eta r_t + \mu b_t \text{ if nesterov else } b_t)

    (ratio 1 where either norm is 0; the momentum runs on the scaled step, after the learning
    rate, as optax's ``trace``). Chain: ``add_decayed_weights(weight_decay_mask) →
    masked(scale_by_trust_ratio, trust_ratio_mask) → scale_by_learning_rate → trace``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        weight_decay: coupled ``λ`` (default 0).
        trust_coefficient: ``c`` (default 1e-3).
        eps: ``ε`` (default 0).
        momentum: ``μ`` (default 0.9).
        nesterov: Nesterov momentum (structural).
        weight_decay_mask: where to decay: ``True`` (everywhere, default), ``False``, a tree
            of bools or a function of the parameters (structural).
        trust_ratio_mask: where to apply the trust ratio, likewise (structural).
    """
    owner = "lars"
    _check_lr(owner, lr)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    check_hparam(owner, "momentum", momentum, ge=0)
    ratio = scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    trust_mask = _as_mask(trust_ratio_mask)
    blocks = {"weight_decay": add_decayed_weights(weight_decay, _as_mask(weight_decay_mask)),
              "trust_ratio": ratio if trust_mask is None else masked(ratio, trust_mask),
              "lr": scale_by_learning_rate(lr), "momentum": trace(momentum, nesterov=nesterov)}
    defaults = dict(lr=blocks["lr"].hparams["lr"], weight_decay=weight_decay,
                    trust_coefficient=trust_coefficient, eps=eps, momentum=momentum)

    def to_inner(h):
        return {"weight_decay": {"weight_decay": h["weight_decay"]},
                "trust_ratio": {"trust_coefficient": h["trust_coefficient"], "eps": h["eps"]},
                "lr": {"lr": h["lr"]}, "momentum": {"momentum": h["momentum"]}}

    structural = dict(nesterov=nesterov, weight_decay_mask=weight_decay_mask,
                      trust_ratio_mask=trust_ratio_mask)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)


@register(paper=('Bernstein et al., 2020, "On the distance between two neural networks and the '
                 'stability of learning" (Fromage)'), drop_in="Fromage")
def fromage(lr: float | torch.Tensor = 1e-2, min_norm: float = 1e-6) -> Transform:
    r"""Fromage (Bernstein et al., 2020), as optax's ``fromage``: a step relative to each
    layer's norm, then a shrink that keeps the norms from growing.

    .. math::
        p_t = \frac{1}{\sqrt{1+\eta^2}}\left(p_{t-1} - \eta\,
              \frac{\|p_{t-1}\|_m}{\|g_t\|_m}\, g_t\right), \qquad
        \|x\|_m = \max(\|x\|, m)

    Chain: ``scale_by_trust_ratio(min_norm) → scale_by_learning_rate(η/√(1+η²)) →
    add_decayed_weights(1/√(1+η²) - 1)`` (the decay after the learning rate).

    Args:
        lr: ``η`` (default 1e-2, the reference implementation's), a number or 0-d tensor (the
            decay reads it too; for a schedule, use :func:`~functional_optim.inject_hparams`).
        min_norm: ``m`` (default 1e-6).
    """
    owner = "fromage"
    _number_or_tensor_lr(owner, lr)
    blocks = {"trust_ratio": scale_by_trust_ratio(min_norm), "lr": scale_by_learning_rate(lr),
              "weight_decay": add_decayed_weights()}
    defaults = dict(lr=lr, min_norm=min_norm)

    def to_inner(h):
        lr = h["lr"]
        shrink = 1 / (1 + lr**2) ** 0.5
        return {"trust_ratio": {"min_norm": h["min_norm"]}, "lr": {"lr": lr * shrink},
                "weight_decay": {"weight_decay": shrink - 1}}

    return _reparametrized(owner, chain(**blocks), defaults, to_inner, {})


@register(paper=('Popov, 1980, "A modification of the Arrow-Hurwicz method for search of saddle '
                 'points"; Mokhtari et al., 2020 (optimistic gradient)'),
          drop_in="OptimisticGradientDescent")
def optimistic_gradient_descent(lr: float | torch.Tensor = 1e-3, alpha: float = 1.0,
                                beta: float = 1.0) -> Transform:
    r"""Optimistic gradient descent, as optax's ``optimistic_gradient_descent``:
    :math:`p_t = p_{t-1} - \eta\big((\alpha+\beta) g_t - \beta g_{t-1}\big)`
    (:math:`g_0 = g_1`), for min-max games.

    Chain: ``scale_by_optimistic_gradient → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        alpha: ``α`` (default 1).
        beta: ``β`` (default 1).
    """
    return _lr_only("optimistic_gradient_descent", lr,
                    {"optimistic": scale_by_optimistic_gradient(alpha, beta)},
                    dict(alpha=alpha, beta=beta), {})


@register(paper='Bernstein et al., 2018, "signSGD: Compressed Optimisation for Non-Convex '
                'Problems"', drop_in="SignSGD")
def sign_sgd(lr: float | torch.Tensor = 1e-3) -> Transform:
    r"""signSGD (Bernstein et al., 2018), as optax's ``sign_sgd``:
    :math:`p_t = p_{t-1} - \eta \operatorname{sign}(g_t)`.

    Chain: ``sign → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
    """
    return _lr_only("sign_sgd", lr, {"sign": sign()}, {}, {})


@register(paper='Bernstein et al., 2018, "signSGD: Compressed Optimisation for Non-Convex '
                'Problems" (Signum)', drop_in="Signum")
def signum(lr: float | torch.Tensor = 1e-3, momentum: float = 0.9) -> Transform:
    r"""Signum (Bernstein et al., 2018), as optax's ``signum``: the sign of the momentum,
    :math:`m_t = \mu m_{t-1} + (1-\mu) g_t`, :math:`p_t = p_{t-1} - \eta
    \operatorname{sign}(m_t)`.

    Chain: ``ema(momentum, debias=False) → sign → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        momentum: ``μ`` (default 0.9; optax's ``beta``).
    """
    owner = "signum"
    check_hparam(owner, "momentum", momentum, ge=0, le=1)
    _check_lr(owner, lr)
    blocks = {"momentum": ema(momentum, debias=False), "sign": sign(),
              "lr": scale_by_learning_rate(lr)}
    defaults = dict(lr=blocks["lr"].hparams["lr"], momentum=momentum)

    def to_inner(h):
        return {"momentum": {"decay": h["momentum"]}, "lr": {"lr": h["lr"]}}

    return _lr_folded(owner, blocks, defaults, to_inner, {})


@register(paper=('Neelakantan et al., 2015, "Adding Gradient Noise Improves Learning for Very '
                 'Deep Networks"'), drop_in="NoisySGD")
def noisy_sgd(lr: float | torch.Tensor = 1e-3, eta: float = 0.01, gamma: float = 0.55, *,
              seed: int = 0) -> Transform:
    r"""SGD with annealed Gaussian gradient noise (Neelakantan et al., 2015), as optax's
    ``noisy_sgd``: :math:`p_t = p_{t-1} - \eta_{lr}\,(g_t + \sqrt{\eta/t^\gamma}\,\xi_t)`,
    :math:`\xi_t \sim \mathcal N(0, I)` drawn from the state (seeded, reproducible; see
    :mod:`functional_optim.transforms.noise`; not jax's numbers).

    Chain: ``add_noise → scale_by_learning_rate``.

    Args:
        lr: the learning rate (default 1e-3), a number, tensor or schedule.
        eta: ``η``, the noise's base variance (default 0.01).
        gamma: ``γ``, its annealing exponent (default 0.55).
        seed: the noise's seed (structural; optax's ``key``; default 0).
    """
    return _lr_only("noisy_sgd", lr, {"noise": add_noise(eta, gamma, seed)},
                    dict(eta=eta, gamma=gamma), dict(seed=seed))


@register(paper=('Loizou et al., 2021, "Stochastic Polyak Step-size for SGD: An Adaptive '
                 'Learning Rate for Fast Convergence"'), drop_in="PolyakSGD")
def polyak_sgd(lr: float | torch.Tensor = 1.0, max_lr: float = 1.0, f_min: float = 0.0,
               eps: float = 0.0, *, variant: str = "sps") -> Transform:
    r"""SGD with Polyak's step size (Loizou et al., 2021), as optax's ``polyak_sgd``; needs the
    loss: ``update(grads, state, params, value=loss)`` (the drop-in class: a closure).

    .. math::
        d_t = \eta g_t, \qquad
        p_t = p_{t-1} - \min\left(\frac{f(p_{t-1}) - f^\star}{\|d_t\|^2 + \epsilon},
              \gamma_{max}\right) d_t

    (no step where :math:`\|d_t\|^2 + \epsilon` is below the machine epsilon; ``"sps+"``
    clips the gap at 0). Chain: ``scale_by_learning_rate → scale_by_polyak``.

    Args:
        lr: ``η``, the scale of the gradients before the step size (default 1; optax's
            ``scaling``), a number, tensor or schedule.
        max_lr: :math:`\gamma_{max}` (default 1; optax's ``max_learning_rate``).
        f_min: :math:`f^\star`, a lower bound of the loss (default 0).
        eps: ``ε`` (default 0).
        variant: ``"sps"`` or ``"sps+"`` (structural).
    """
    owner = "polyak_sgd"
    _check_lr(owner, lr)
    blocks = {"lr": scale_by_learning_rate(lr),
              "polyak": scale_by_polyak(f_min, max_lr, eps, variant)}
    defaults = dict(lr=blocks["lr"].hparams["lr"], max_lr=max_lr, f_min=f_min, eps=eps)

    def to_inner(h):
        return {"lr": {"lr": h["lr"]},
                "polyak": {"f_min": h["f_min"], "max_lr": h["max_lr"], "eps": h["eps"]}}

    return _reparametrized(owner, chain(**blocks), defaults, to_inner, dict(variant=variant))

r"""The tricks of current research as aliases with drop-in classes: cautious AdamW, LaProp,
MARS-AdamW, Adam-mini, AdamC, OrthoGrad-AdamW, Muon with AdamW on the other leaves, AdamW with
an EMA of the parameters, and the two-gradient SAM family's ASAM and Momentum-SAM.

Each is a short chain of the blocks of :mod:`functional_optim.transforms.tricks`,
:mod:`~functional_optim.transforms.adam_variants`, :mod:`~functional_optim.transforms.orthogonal`,
:mod:`~functional_optim.transforms.sharpness` and :mod:`functional_optim.combinators`,
with torch's hyperparameter names. Where the drop-in class needs more than the usual step
(:class:`~functional_optim.registry.DropInProtocol`): ``ASAM`` steps twice per
``step(closure)`` as ``SAM`` does; ``MSAM`` and ``AdamWEMA`` have ``eval()`` / ``train()``,
which swap the parameters with the evaluation ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as _tree
from ..base import Transform, chain, check_betas, check_hparam
from ..combinators import partition
from ..combinators.tricks import corrected_decay, ema_eval_params, ema_params, ema_train_params
from ..registry import DropInProtocol, register
from ..transforms import (
    add_cautious_decayed_weights,
    add_decayed_weights,
    cautious,
    momentum_sam,
    momentum_sam_eval_params,
    momentum_sam_train_params,
    normalize,
    orthograd,
    sam,
    scale_by_adam,
    scale_by_adam_mini,
    scale_by_laprop,
    scale_by_learning_rate,
    scale_by_mars,
    scale_by_muon,
)
from ..transforms.orthogonal import MUON_NS_COEFFICIENTS
from ._common import _check_lr, _classic, _decay_around, _lr_folded, _reparametrized
from .basic import adamw, sgd
from .contrib_more import _sam_step

__all__ = ["cautious_adamw", "laprop", "mars_adamw", "adam_mini", "adamc", "orthograd_adamw",
           "muon_adamw", "adamw_ema", "asam_sgd", "msam_sgd", "muon_labels"]


def _adam_keys(h: dict) -> dict:
    return {"betas": h["betas"], "eps": h["eps"]}


@register(paper=('Liang et al., 2024, "Cautious Optimizers: Improving Training with One Line of '
                 'Code"; cautious weight decay: Chen et al., 2025'), drop_in="CautiousAdamW")
def cautious_adamw(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8, weight_decay: float = 1e-2, *,
                   cautious_weight_decay: bool = False) -> Transform:
    r"""Cautious AdamW (Liang et al., 2024): AdamW whose direction is masked where it disagrees
    in sign with the gradient (:func:`~functional_optim.transforms.cautious`).

    Chain: ``cautious(scale_by_adam) → add_decayed_weights (or, with cautious_weight_decay,
    add_cautious_decayed_weights) → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled ``λ`` (default 1e-2).
        cautious_weight_decay: decay only where update and parameter agree in sign (Chen et
            al., 2025; structural).
    """
    owner = "cautious_adamw"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    blocks = _decay_around(owner, lr, weight_decay, False, True, "adam",
                           cautious(scale_by_adam(betas, eps)))
    if cautious_weight_decay:
        blocks["weight_decay"] = add_cautious_decayed_weights(weight_decay)  # (same place)
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "adam", ("betas", "eps"),
                    dict(cautious_weight_decay=cautious_weight_decay))


@register(paper=('Ziyin, Wang & Ueda, 2020, "LaProp: Separating Momentum and Adaptivity in '
                 'Adam"'), drop_in="LaProp")
def laprop(lr: float | torch.Tensor = 4e-4, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-15, weight_decay: float = 0.0) -> Transform:
    r"""LaProp (Ziyin et al., 2020), as the authors' ``LaProp`` with a constant learning rate
    (their momentum folds in the rate; see
    :func:`~functional_optim.transforms.scale_by_laprop`).

    Chain: ``scale_by_laprop → scale_by_learning_rate → add_decayed_weights(after_step=True)``
    (the authors decay the stepped parameters by ``λ``, not by ``ηλ``: :math:`p_t = (p_{t-1}
    - \eta u_t)(1 - \lambda)`).

    Args:
        lr: ``η`` (default 4e-4, the authors'), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``, the authors').
        eps: ``ε`` (default 1e-15, the authors').
        weight_decay: ``λ`` (default 0).
    """
    owner = "laprop"
    _check_lr(owner, lr)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    blocks = {"laprop": scale_by_laprop(betas, eps), "lr": scale_by_learning_rate(lr),
              "weight_decay": add_decayed_weights(weight_decay, after_step=True)}
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)

    def to_inner(h):
        return {"laprop": _adam_keys(h), "lr": {"lr": h["lr"]},
                "weight_decay": {"weight_decay": h["weight_decay"]}}

    return _reparametrized(owner, chain(**blocks), defaults, to_inner, {})


@register(paper=('Yuan et al., 2024, "MARS: Unleashing the Power of Variance Reduction for '
                 'Training Large Models"'), drop_in="MARSAdamW")
def mars_adamw(lr: float | torch.Tensor = 3e-3, betas: tuple[float, float] = (0.95, 0.99),
               eps: float = 1e-8, weight_decay: float = 0.0, gamma: float = 0.025) -> Transform:
    r"""MARS-AdamW (Yuan et al., 2024), as the authors' ``MARS(mars_type="mars-adamw",
    optimize_1d=True)``: AdamW on MARS's variance-reduced gradients, every leaf.

    Chain: ``scale_by_mars(γ, β1) → scale_by_adam((β1, β2), ε) → add_decayed_weights →
    scale_by_learning_rate`` (``β1`` drives both). The authors' default ``optimize_1d=False``
    gives the leaves under 2-D plain AdamW with their own ``lr_1d``, ``betas_1d`` and
    ``weight_decay_1d``: a :func:`~functional_optim.partition` of this and
    :func:`~functional_optim.adamw`.

    Args:
        lr: ``η`` (default 3e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.95, 0.99)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled ``λ`` (default 0).
        gamma: ``γ``, the correction's strength (default 0.025).
    """
    owner = "mars_adamw"
    check_betas(owner, betas)
    blocks = _decay_around(owner, lr, weight_decay, False, True, mars=scale_by_mars(
        gamma, betas[0]), adam=scale_by_adam(betas, eps))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay, gamma=gamma)

    def to_inner(h):
        return {"mars": {"gamma": h["gamma"], "beta": h["betas"][0]}, "adam": _adam_keys(h),
                "lr": {"lr": h["lr"]}, "weight_decay": {"weight_decay": h["weight_decay"]}}

    return _lr_folded(owner, blocks, defaults, to_inner, {})


@register(paper='Zhang et al., 2024, "Adam-mini: Use Fewer Learning Rates To Gain More"',
          drop_in="AdamMini")
def adam_mini(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8, weight_decay: float = 0.1, *, blocks: Any = None) -> Transform:
    r"""Adam-mini (Zhang et al., 2024), as the authors' ``Adam_mini``: AdamW with one second
    moment per block (by default one per leaf; ``blocks`` gives the authors' partition of a
    Transformer, see :func:`~functional_optim.transforms.scale_by_adam_mini`).

    Chain: ``scale_by_adam_mini → add_decayed_weights → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled ``λ`` (default 0.1, the authors').
        blocks: the number of blocks of each leaf, a tree or a function ``params -> tree``
            (structural; default one per leaf).
    """
    owner = "adam_mini"
    blocks_ = _decay_around(owner, lr, weight_decay, False, True, "adam_mini",
                            scale_by_adam_mini(betas, eps, blocks=blocks))
    defaults = dict(lr=blocks_["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)
    return _classic(owner, blocks_, defaults, "adam_mini", ("betas", "eps"),
                    dict(blocks=blocks))


@register(paper=('Defazio et al., 2025, "Why Gradients Rapidly Increase Near the End of '
                 'Training"'), drop_in="AdamC")
def adamc(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 1e-2, max_lr: float | None = None
          ) -> Transform:
    r"""AdamC (Defazio et al., 2025): AdamW whose decay follows the learning rate,
    :math:`\lambda_t = \lambda\,\eta_t/\eta_{max}` (:func:`~functional_optim.corrected_decay`
    around :func:`~functional_optim.adamw`).

    ``max_lr`` ``None`` is the ``lr`` given here. In the drop-in class ``AdamC``, pass
    ``max_lr`` with a learning-rate scheduler: ``None`` is read as the group's ``lr`` when its
    transform is first built (at the first step, after a warmup scheduler has lowered it).

    Args:
        lr: ``η_t`` (default 1e-3), a number or 0-d tensor (a param group's, set by a
            scheduler).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: ``λ`` at the peak rate (default 1e-2).
        max_lr: ``η_max`` (default ``lr``).
    """
    return corrected_decay(adamw(lr, betas, eps, weight_decay), max_lr)


@register(paper=('Prieto et al., 2025, "Grokking at the Edge of Numerical Stability" '
                 '(OrthoGrad)'), drop_in="OrthoAdamW")
def orthograd_adamw(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, weight_decay: float = 1e-2) -> Transform:
    r"""AdamW on OrthoGrad's gradients (Prieto et al., 2025): each leaf's gradient without its
    component along the parameter, at the gradient's norm
    (:func:`~functional_optim.transforms.orthograd`), as the authors' ``OrthoGrad(params,
    torch.optim.AdamW)``.

    Chain: ``orthograd → scale_by_adam → add_decayed_weights → scale_by_learning_rate``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled ``λ`` (default 1e-2).
    """
    owner = "orthograd_adamw"
    blocks = _decay_around(owner, lr, weight_decay, False, True, orthograd=orthograd(),
                           adam=scale_by_adam(betas, eps))
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "adam", ("betas", "eps"), {})


def muon_labels(params: Any) -> Any:
    """Muon's default partition: ``"muon"`` for every leaf of 2 or more dimensions,
    ``"adamw"`` for the others (biases, norms' gains, scalars)."""
    return _tree.map(lambda p: "muon" if p.ndim >= 2 else "adamw", params)


@register(paper=('Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"; '
                 'Liu et al., 2025, "Muon is Scalable for LLM Training"'), drop_in="MuonAdamW")
def muon_adamw(lr: float | torch.Tensor = 0.02, momentum: float = 0.95,
               weight_decay: float = 0.0, adamw_lr: float | torch.Tensor = 3e-4,
               adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
               adamw_weight_decay: float = 0.0, nesterov: bool = True,
               ns_coefficients: Any = MUON_NS_COEFFICIENTS, eps: float = 1e-7,
               ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
               labels: Callable[[Any], Any] | list = muon_labels,
               ns_dtype: torch.dtype | None = torch.bfloat16) -> Transform:
    r"""Muon on the matrices, AdamW on the rest (Jordan et al., 2024, as the reference
    ``MuonWithAuxAdam``): orthogonalized momentum for the leaves ``labels`` calls ``"muon"``
    (by default every leaf of 2 or more dimensions, convolutions as matrices), AdamW with its
    own rate for those it calls ``"adamw"``.

    Chain: ``partition({"muon": scale_by_muon(flatten=True) → add_decayed_weights →
    scale_by_learning_rate(lr), "adamw": scale_by_adam → add_decayed_weights →
    scale_by_learning_rate(adamw_lr)}, labels)``.

    Embeddings and the output layer are matrices that Muon's authors give AdamW: pass
    ``labels`` to say so, a function ``params -> tree of "muon"/"adamw"`` or rules over
    parameter names, e.g. ``[(r"embed|lm_head", "adamw"), (r".*", "muon")]`` (see
    :func:`~functional_optim.partition`); the drop-in class's params tree is keyed by the
    parameters' names when the model gives them. Moonlight's recipe (Liu et al., 2025), one
    rate and decay for both, is ``adjust_lr_fn="match_rms_adamw"`` with ``adamw_lr=lr`` and
    ``adamw_weight_decay=weight_decay``.

    Args:
        lr: Muon's ``η`` (default 0.02), a number, tensor or schedule.
        momentum: Muon's ``μ`` (default 0.95).
        weight_decay: Muon's decoupled ``λ`` (default 0).
        adamw_lr: AdamW's ``η`` (default 3e-4), a number, tensor or schedule.
        adamw_betas: AdamW's ``(β1, β2)`` (default ``(0.9, 0.95)``).
        adamw_eps: AdamW's ``ε`` (default 1e-8).
        adamw_weight_decay: AdamW's decoupled ``λ`` (default 0).
        nesterov: Nesterov momentum (structural; default True).
        ns_coefficients: Newton-Schulz coefficients: ``(a, b, c)``, or one per iteration
            (``functional_optim.transforms.NS_COEFFICIENTS``).
        eps: ``ε`` of the Newton-Schulz normalization (default 1e-7).
        ns_steps: Newton-Schulz iterations (structural; default 5).
        adjust_lr_fn: Muon's learning-rate adjustment (structural; see
            :func:`~functional_optim.transforms.scale_by_muon`).
        labels: which leaves Muon takes (structural; default :func:`muon_labels`).
        ns_dtype: the iteration's precision (structural; default bfloat16).
    """
    owner = "muon_adamw"
    muon_blocks = _decay_around(owner, lr, weight_decay, False, True, "muon", scale_by_muon(
        momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype=ns_dtype,
        flatten=True))
    # (errors name the AdamW part's arguments by its blocks' names: "muon_adamw (AdamW): lr")
    adam_blocks = _decay_around(f"{owner} (AdamW)", adamw_lr, adamw_weight_decay, False, True,
                                "adam", scale_by_adam(adamw_betas, adamw_eps))
    inner = partition({"muon": chain(**muon_blocks), "adamw": chain(**adam_blocks)}, labels)
    defaults = dict(lr=muon_blocks["lr"].hparams["lr"], momentum=momentum,
                    weight_decay=weight_decay, adamw_lr=adam_blocks["lr"].hparams["lr"],
                    adamw_betas=tuple(adamw_betas), adamw_eps=adamw_eps,
                    adamw_weight_decay=adamw_weight_decay,
                    ns_coefficients=muon_blocks["muon"].hparams["ns_coefficients"], eps=eps)

    def to_inner(h):
        return {"muon": {"muon": {"momentum": h["momentum"],
                                  "ns_coefficients": h["ns_coefficients"], "eps": h["eps"]},
                         "weight_decay": {"weight_decay": h["weight_decay"]},
                         "lr": {"lr": h["lr"]}},
                "adamw": {"adam": {"betas": h["adamw_betas"], "eps": h["adamw_eps"]},
                          "weight_decay": {"weight_decay": h["adamw_weight_decay"]},
                          "lr": {"lr": h["adamw_lr"]}}}

    structural = dict(nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                      labels=labels, ns_dtype=ns_dtype)
    return _reparametrized(owner, inner, defaults, to_inner, structural)


@register(paper=('Loshchilov & Hutter, 2019 (AdamW) with an exponential moving average of the '
                 'parameters (Polyak & Juditsky, 1992)'),
          drop_in="AdamWEMA", protocol=DropInProtocol(modes=(ema_eval_params, ema_train_params)))
def adamw_ema(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8, weight_decay: float = 1e-2, ema_decay: float = 0.999
              ) -> Transform:
    r"""AdamW that also tracks an EMA of the parameters
    (:func:`~functional_optim.ema_params`): ``chain(adamw(...), ema_params(ema_decay))``.

    The averaged parameters are :func:`~functional_optim.ema_eval_params` of the state (pure);
    the drop-in class ``AdamWEMA`` swaps them in place with ``eval()`` and back with
    ``train()`` (``step`` in eval mode raises), the swap helper of every drop-in class whose
    protocol has ``modes``: ``DropInProtocol(modes=(ema_eval_params, ema_train_params))``
    gives any alias ending in ``ema_params`` the same.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled ``λ`` (default 1e-2).
        ema_decay: the average's ``β`` (default 0.999).
    """
    inner = adamw(lr, betas, eps, weight_decay)
    keys = tuple(inner.hparams)
    defaults = dict(inner.hparams, ema_decay=ema_decay)

    def to_inner(h):
        return ({k: h[k] for k in keys}, {"decay": h["ema_decay"]})

    return _reparametrized("adamw_ema", chain(inner, ema_params(ema_decay)), defaults,
                           to_inner, {})


def _sgd_keys(h: dict) -> dict:
    return {k: h[k] for k in ("lr", "momentum", "dampening", "weight_decay")}


@register(paper=('Kwon et al., 2021, "ASAM: Adaptive Sharpness-Aware Minimization for '
                 'Scale-Invariant Learning of Deep Neural Networks"'),
          drop_in="ASAM", protocol=DropInProtocol(step=_sam_step))
def asam_sgd(lr: float | torch.Tensor = 1e-3, rho: float = 0.5, momentum: float | None = 0.0,
             dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
             eta: float = 0.01, eps: float = 1e-16) -> Transform:
    r"""ASAM (Kwon et al., 2021) around torch.optim.SGD, as the authors' ``ASAM(optimizer,
    model, rho, eta)``: SAM's mechanism (:func:`~functional_optim.transforms.sam`, the
    transparent protocol) with the adaptive ascent :math:`\rho\, T^2 g / (\lVert T g\rVert +
    \epsilon)`, :math:`T = |p| + \eta` (:func:`~functional_optim.transforms.normalize` with
    ``adaptive=True``).

    The drop-in class ``ASAM``: ``step(closure)`` runs both passes, as
    ``functional_optim.optim.SAM`` (the authors' ``ascent_step`` / ``descent_step``). The
    authors scale only parameters named ``weight``; here every parameter (give biases
    :func:`~functional_optim.sam_sgd` in another param group to follow them).

    Args:
        lr: SGD's ``η`` (default 1e-3), a number, tensor or schedule.
        rho: ``ρ`` (default 0.5, the authors' for ASAM).
        momentum: SGD's ``μ`` (default 0), or ``None`` (structural).
        dampening: SGD's ``τ`` (default 0).
        weight_decay: SGD's coupled L2 ``λ`` (default 0).
        nesterov: Nesterov momentum (structural).
        eta: ``η`` of :math:`T` (default 0.01).
        eps: ``ε`` added to the norm (default 1e-16, the authors').
    """
    owner = "asam_sgd"
    check_hparam(owner, "rho", rho, ge=0)
    inner = sgd(lr, momentum, dampening, weight_decay, nesterov)
    ascent = chain(normalize=normalize(eps, adaptive=True, eta=eta),
                   lr=scale_by_learning_rate(rho))
    defaults = dict(lr=inner.hparams["lr"], rho=rho, momentum=momentum, dampening=dampening,
                    weight_decay=weight_decay, eta=eta, eps=eps)

    def to_inner(h):
        return {"optimizer": _sgd_keys(h), "adv_optimizer": {
            "normalize": {"eps": h["eps"], "eta": h["eta"]}, "lr": {"lr": h["rho"]}}}

    return _reparametrized(owner, sam(inner, ascent), defaults, to_inner,
                           dict(nesterov=nesterov))


@register(paper=('Becker et al., 2024, "Momentum-SAM: Sharpness Aware Minimization without '
                 'Computational Overhead"'),
          drop_in="MSAM", protocol=DropInProtocol(modes=(momentum_sam_eval_params,
                                                         momentum_sam_train_params)))
def msam_sgd(lr: float | torch.Tensor = 0.1, momentum: float = 0.9, weight_decay: float = 1e-2,
             rho: float = 0.3, eps: float = 1e-12) -> Transform:
    r"""Momentum-SAM around SGD (Becker et al., 2024), as the authors' ``MSAM``: one gradient
    per step, taken at the parameters perturbed along the momentum
    (:func:`~functional_optim.transforms.momentum_sam` around :func:`~functional_optim.sgd`).

    The drop-in class ``MSAM``'s parameters are the perturbed ones while training;
    ``eval()`` moves them to the evaluation point and ``train()`` back (the authors'
    ``move_back_from_momentumAscent`` / ``move_up_to_momentumAscent``).

    Args:
        lr: ``η`` (default 0.1), a number, tensor or schedule.
        momentum: ``μ`` (default 0.9; torch's SGD momentum, without dampening).
        weight_decay: coupled L2 ``λ`` at the perturbed point (default 1e-2).
        rho: ``ρ`` (default 0.3).
        eps: ``ε`` added to the step's norm (default 1e-12).
    """
    inner = sgd(lr, momentum, 0.0, weight_decay)
    defaults = dict(lr=inner.hparams["lr"], momentum=momentum, weight_decay=weight_decay,
                    rho=rho, eps=eps)

    def to_inner(h):
        return {"optimizer": {"lr": h["lr"], "momentum": h["momentum"],
                              "weight_decay": h["weight_decay"]},
                "rho": h["rho"], "eps": h["eps"]}

    return _reparametrized("msam_sgd", momentum_sam(inner, rho, eps), defaults, to_inner, {})

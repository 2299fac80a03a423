"""optax.contrib's algorithms (besides the schedule-free and learning-rate-free family): ADOPT,
ACProp, AdEMAMix, simplified AdEMAMix, MADGRAD, Sophia, SAM, GaLore and DP-SGD, each a short chain
of blocks with torch's hyperparameter names and optax's numbers.

Three need more than ``p.grad`` in their drop-in class (a
:class:`~functional_optim.registry.DropInProtocol`): ``functional_optim.optim.SAM`` steps
twice per ``step(closure)``, ``functional_optim.optim.Sophia`` takes its Hessian-vector
products from the graph of ``loss.backward(create_graph=True)``, and
``functional_optim.optim.DPSGD`` steps on Opacus's per-example ``p.grad_sample``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as _tree
from ..base import Transform, chain, check_hparam
from ..registry import DropInProtocol, register
from ..transforms import (
    asam_scale,
    differentially_private_aggregate,
    hutchinson_estimator_diag_hessian,
    normalize,
    sam,
    scale_by_acprop,
    scale_by_adam,
    scale_by_ademamix,
    scale_by_adopt,
    scale_by_galore,
    scale_by_learning_rate,
    scale_by_madgrad,
    scale_by_simplified_ademamix,
    scale_by_sophia,
    trace,
)
from ..transforms.asynchronous import adopt_clip_value
from ._common import _classic, _decay_around, _lr_folded, _no_momentum, _reparametrized
from .basic import sgd

__all__ = ["adopt", "acprop", "ademamix", "simplified_ademamix", "madgrad", "sophia",
           "sam_sgd", "galore_adamw", "dpsgd"]


def _lr_of(blocks: dict) -> Any:
    return blocks["lr"].hparams["lr"]


@register(paper=('Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 '
                 'with the Optimal Rate"'), drop_in="ADOPT")
def adopt(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.9999),
          eps: float = 1e-6, weight_decay: float = 0.0, *, nesterov: bool = False,
          clip_value: Callable[[torch.Tensor], Any] | None = adopt_clip_value,
          decoupled_weight_decay: bool = False) -> Transform:
    r"""ADOPT (Taniguchi et al., 2024), optax's ``contrib.adopt`` with a weight decay.

    Chain: ``[add_decayed_weights if coupled] → scale_by_adopt →
    [add_decayed_weights if decoupled] → scale_by_learning_rate``; see
    :func:`~functional_optim.transforms.scale_by_adopt`. With ``weight_decay=0`` (the default)
    it is optax's ``adopt``; a decay is L2 (the authors' default) or, decoupled, AdamW's.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.9999)``).
        eps: ``ε`` (default 1e-6).
        weight_decay: ``λ`` (default 0).
        nesterov: Nesterov momentum (structural).
        clip_value: the clipping bound ``t -> c_t`` (structural; default :math:`t^{1/4}`;
            ``None``: no clipping, optax's ``use_clipping=False``).
        decoupled_weight_decay: AdamW's decay (structural).
    """
    owner = "adopt"
    blocks = _decay_around(owner, lr, weight_decay, False, decoupled_weight_decay, "adopt",
                           scale_by_adopt(betas, eps, nesterov=nesterov, clip_value=clip_value))
    defaults = dict(lr=_lr_of(blocks), betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    structural = dict(nesterov=nesterov, clip_value=clip_value,
                      decoupled_weight_decay=decoupled_weight_decay)
    return _classic(owner, blocks, defaults, "adopt", ("betas", "eps"), structural)


@register(paper=('Zhuang et al., 2021, "Momentum Centering and Asynchronous Update for Adaptive '
                 'Gradient Methods"'), drop_in="ACProp")
def acprop(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-16, eps_root: float = 1e-16, weight_decay: float = 0.0
           ) -> Transform:
    r"""ACProp (Zhuang et al., 2021), as optax's ``contrib.acprop``.

    Chain: ``scale_by_acprop → add_decayed_weights → scale_by_learning_rate`` (the decay is
    decoupled and scaled by the learning rate, as optax's); see
    :func:`~functional_optim.transforms.scale_by_acprop`.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-16).
        eps_root: ``ε_root`` (default 1e-16).
        weight_decay: ``λ`` (default 0).
    """
    owner = "acprop"
    blocks = _decay_around(owner, lr, weight_decay, False, True, "acprop",
                           scale_by_acprop(betas, eps, eps_root))
    defaults = dict(lr=_lr_of(blocks), betas=tuple(betas), eps=eps, eps_root=eps_root,
                    weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "acprop", ("betas", "eps", "eps_root"), {})


@register(paper=('Pagliardini, Ablin & Grangier, 2024, "The AdEMAMix Optimizer: Better, Faster, '
                 'Older"'), drop_in="AdEMAMix")
def ademamix(lr: float | torch.Tensor = 1e-3,
             betas: tuple[float, float, float] = (0.9, 0.999, 0.9999), alpha: float = 5.0,
             eps: float = 1e-8, eps_root: float = 0.0, weight_decay: float = 0.0) -> Transform:
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024), as optax's ``contrib.ademamix``.

    Chain: ``scale_by_ademamix → add_decayed_weights → scale_by_learning_rate`` (decoupled
    decay, scaled by the learning rate); see
    :func:`~functional_optim.transforms.scale_by_ademamix`. The paper's warmups of ``alpha`` and
    ``β3``: ``fo.inject_hparams(fo.ademamix(...), {"alpha": s1, "betas.2": s2})``.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2, β3)`` (default ``(0.9, 0.999, 0.9999)``).
        alpha: ``α`` (default 5, optax's).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
        weight_decay: ``λ`` (default 0).
    """
    owner = "ademamix"
    blocks = _decay_around(owner, lr, weight_decay, False, True, "ademamix",
                           scale_by_ademamix(betas, alpha, eps, eps_root))
    defaults = dict(lr=_lr_of(blocks), betas=tuple(betas), alpha=alpha, eps=eps,
                    eps_root=eps_root, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "ademamix", ("betas", "alpha", "eps", "eps_root"),
                    {})


@register(paper=('Morwani et al., 2025, "Connections between Schedule-Free Optimizers, '
                 'AdEMAMix, and Accelerated SGD Variants"'), drop_in="SimplifiedAdEMAMix")
def simplified_ademamix(lr: float | torch.Tensor = 1e-3,
                        betas: tuple[float, float] = (0.99, 0.95), alpha: float = 0.0,
                        eps: float = 1e-8, eps_root: float = 0.0, weight_decay: float = 0.0
                        ) -> Transform:
    r"""Simplified AdEMAMix (Morwani et al., 2025), as optax's ``contrib.simplified_ademamix``.

    Chain: ``scale_by_simplified_ademamix → add_decayed_weights → scale_by_learning_rate``
    (decoupled decay, scaled by the learning rate); see
    :func:`~functional_optim.transforms.scale_by_simplified_ademamix`.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.99, 0.95)``).
        alpha: ``α`` (default 0).
        eps: ``ε`` (default 1e-8).
        eps_root: ``ε_root`` (default 0).
        weight_decay: ``λ`` (default 0).
    """
    owner = "simplified_ademamix"
    blocks = _decay_around(owner, lr, weight_decay, False, True, "simplified_ademamix",
                           scale_by_simplified_ademamix(betas, alpha, eps, eps_root))
    defaults = dict(lr=_lr_of(blocks), betas=tuple(betas), alpha=alpha, eps=eps,
                    eps_root=eps_root, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "simplified_ademamix",
                    ("betas", "alpha", "eps", "eps_root"), {})


@register(paper=('Defazio & Jelassi, 2021, "Adaptivity without Compromise: A Momentumized, '
                 'Adaptive, Dual Averaged Gradient Method for Stochastic Optimization"'),
          drop_in="MADGRAD")
def madgrad(lr: float | torch.Tensor = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0,
            eps: float = 1e-6) -> Transform:
    r"""MADGRAD (Defazio & Jelassi, 2021), as optax's ``contrib.madgrad`` and the authors'
    ``madgrad.MADGRAD`` (same arguments and defaults).

    Chain: ``add_decayed_weights → scale_by_madgrad`` (L2 decay; the learning rate is inside the
    dual averaging); see :func:`~functional_optim.transforms.scale_by_madgrad`. A schedule of
    ``lr``: ``fo.inject_hparams(fo.madgrad(...), {"lr": schedule})``.

    Args:
        lr: ``η`` (default 1e-2), a number or 0-d tensor.
        momentum: ``μ`` in [0, 1) (default 0.9).
        weight_decay: ``λ`` (default 0).
        eps: ``ε`` (default 1e-6).
    """
    owner = "madgrad"
    check_hparam(owner, "lr", lr, ge=0)
    blocks = _decay_around(owner, lr, weight_decay, False, False, "madgrad",
                           scale_by_madgrad(lr, momentum, eps), lr_block=False)
    defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps)
    return _classic(owner, blocks, defaults, "madgrad", ("lr", "momentum", "eps"), {},
                    lr_block=False)


def _graph_hvp(params: dict, v: dict) -> dict:
    """The Hessian-vector product from the graph of each parameter's ``.grad`` (made by
    ``loss.backward(create_graph=True)``)."""
    names = [n for n, p in params.items() if p is not None]
    grads = [params[n].grad for n in names]
    if any(g is None or g.grad_fn is None for g in grads):
        raise RuntimeError(
            "Sophia: the Hessian-vector product differentiates the gradients: call "
            "loss.backward(create_graph=True) before step() (or in the closure)")
    products = torch.autograd.grad(grads, [params[n] for n in names], [v[n] for n in names],
                                   retain_graph=True, allow_unused=True)
    out = dict.fromkeys(params)
    for n, hv in zip(names, products):
        out[n] = torch.zeros_like(params[n]) if hv is None else hv.detach()
    return out


def _sophia_step(optimizer: Any, closure: Any, run: Callable) -> Any:
    """The drop-in Sophia's step: the closure (its backward with ``create_graph=True``), then one
    update with the Hessian-vector products of that graph."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    run(hvp_fn=_graph_hvp)
    return loss


@register(paper=('Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for '
                 'Language Model Pre-training"'),
          drop_in="Sophia", protocol=DropInProtocol(step=_sophia_step))
def sophia(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.965, 0.99),
           eps: float = 1e-8, weight_decay: float = 1e-4, gamma: float = 0.01,
           clip_threshold: float | None = 1.0, *, update_interval: int = 10, seed: int = 0,
           host_refresh: bool = False) -> Transform:
    r"""Sophia-H (Liu et al., 2023), as optax's ``contrib.sophia`` with Hutchinson's estimator.

    Chain: ``scale_by_sophia(hessian_diagonal_fn=hutchinson_estimator_diag_hessian(seed)) →
    add_decayed_weights → scale_by_learning_rate`` (decoupled decay, scaled by the learning
    rate); see :func:`~functional_optim.transforms.scale_by_sophia`. ``update`` takes the
    Hessian-vector product as ``hvp_fn=`` or ``obj_fn=`` (worked example:
    :mod:`functional_optim.transforms.second_order`).

    The drop-in class ``functional_optim.optim.Sophia`` takes it from the gradients'
    graph: call ``loss.backward(create_graph=True)``, then ``step()`` (or
    ``step(closure)`` with that backward in the closure), as Hutchinson-based torch optimizers
    (AdaHessian) do.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: ``(β1, β2)`` (default ``(0.965, 0.99)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: ``λ`` (default 1e-4).
        gamma: ``γ`` (default 0.01).
        clip_threshold: ``c`` (default 1), or ``None``: no clipping (structural).
        update_interval: Hessian refresh interval (structural; default 10).
        seed: the Hutchinson probes' stream (structural).
        host_refresh: decide the refresh on the host (structural; see the block).
    """
    owner = "sophia"
    block = scale_by_sophia(betas, eps, gamma, clip_threshold, update_interval,
                            hutchinson_estimator_diag_hessian(seed), host_refresh=host_refresh)
    blocks = _decay_around(owner, lr, weight_decay, False, True, "sophia", block)
    defaults = dict(lr=_lr_of(blocks), betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                    gamma=gamma, clip_threshold=clip_threshold)
    keys = ("betas", "eps", "gamma", "clip_threshold")

    def to_inner(h):
        return {"sophia": {k: h[k] for k in keys}, "lr": {"lr": h["lr"]},
                "weight_decay": {"weight_decay": h["weight_decay"]}}

    structural = dict(update_interval=update_interval, seed=seed, host_refresh=host_refresh)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)


def _sam_norm(optimizer: Any) -> torch.Tensor:
    """The norm of the gradients over all param groups (of :math:`T \\odot g` in an adaptive
    group: :math:`T = |p|` with ``adaptive``, ASAM's :math:`|p| + \\eta` in a group with an
    ``eta``), as davda54/sam's ``SAM._grad_norm`` and the authors' ``ASAM``."""
    def scaled(group, p):
        if "eta" in group:
            return p.grad * asam_scale(p, group["eta"])
        return p.grad * p.abs() if group["adaptive"] else p.grad

    return _tree.global_norm([scaled(group, p) for group in optimizer.param_groups
                              for p in group["params"] if p.grad is not None])


def _sam_step(optimizer: Any, closure: Any, run: Callable) -> Any:
    """The drop-in SAM's step: the ascent pass (to the perturbed point) with the gradients
    already computed; with a closure, the closure there, then the outer pass."""
    run(norm=_sam_norm(optimizer))
    if closure is None:
        return None
    with torch.enable_grad():
        loss = closure()
    run(norm=_sam_norm(optimizer))
    return loss


@register(paper=('Foret et al., 2021, "Sharpness-Aware Minimization for Efficiently Improving '
                 'Generalization"; ASAM: Kwon et al., 2021'),
          drop_in="SAM", protocol=DropInProtocol(step=_sam_step))
def sam_sgd(lr: float | torch.Tensor = 1e-3, rho: float = 0.05, momentum: float | None = 0.0,
            dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
            adaptive: bool = False, eps: float = 1e-12) -> Transform:
    r"""SAM (Foret et al., 2021) around torch.optim.SGD, as davda54/sam's
    ``SAM(params, torch.optim.SGD, rho, adaptive, lr=..., momentum=...)``, in optax's
    transparent protocol (:func:`~functional_optim.transforms.sam`).

    Chain: ``sam(sgd(lr, momentum, dampening, weight_decay, nesterov),
    chain(normalize(eps, adaptive), scale_by_learning_rate(rho)), sync_period=2)``: updates
    alternate between the ascent :math:`p \leftarrow p + \rho\, g/(\lVert g\rVert + \epsilon)`
    (ASAM with ``adaptive``: :math:`\rho\, p^2 g/(\lVert p g\rVert + \epsilon)`) and SGD's step
    taken from the point before it, with the gradient at the perturbed point.

    The drop-in class ``functional_optim.optim.SAM``: ``step(closure)`` runs both passes
    (the ascent with the gradients present, the closure at the perturbed point, then the outer
    step), as davda54/sam's ``SAM.step``; ``step()`` alone runs one pass (davda54's
    ``first_step``, then after the next backward its ``second_step``). The ascent is
    normalized by the gradient norm over all its param groups, as davda54's.

    Args:
        lr: SGD's ``η`` (default 1e-3), a number, tensor or schedule.
        rho: the neighbourhood's radius ``ρ`` (default 0.05).
        momentum: SGD's ``μ`` (default 0), or ``None`` (structural: no momentum block).
        dampening: SGD's ``τ`` (default 0).
        weight_decay: SGD's coupled L2 ``λ`` (default 0).
        nesterov: Nesterov momentum (structural).
        adaptive: ASAM (Kwon et al., 2021; structural).
        eps: ``ε`` added to the norm (default 1e-12, davda54's).
    """
    owner = "sam_sgd"
    check_hparam(owner, "rho", rho, ge=0)
    inner = sgd(lr, momentum, dampening, weight_decay, nesterov)
    ascent = chain(normalize=normalize(eps, adaptive=adaptive), lr=scale_by_learning_rate(rho))
    defaults = dict(lr=inner.hparams["lr"], rho=rho, momentum=momentum, dampening=dampening,
                    weight_decay=weight_decay, eps=eps)
    sgd_keys = ("lr", "momentum", "dampening", "weight_decay")

    def to_inner(h):
        return {"optimizer": {k: h[k] for k in sgd_keys},
                "adv_optimizer": {"normalize": {"eps": h["eps"]}, "lr": {"lr": h["rho"]}}}

    return _reparametrized(owner, sam(inner, ascent), defaults, to_inner,
                           dict(nesterov=nesterov, adaptive=adaptive))


@register(paper=('Zhao et al., 2024, "GaLore: Memory-Efficient LLM Training by Gradient '
                 'Low-Rank Projection"'), drop_in="GaLoreAdamW")
def galore_adamw(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, scale: float = 1.0, *,
                 rank: int = 128, update_proj_gap: int = 200,
                 weight_dimension_numbers: Any = None,
                 svd_dtype: torch.dtype | None = torch.float32,
                 host_refresh: bool = False) -> Transform:
    r"""GaLore with Adam in the projected space (Zhao et al., 2024), as optax's
    ``contrib.galore`` with its default ``base_optimizer`` (``scale_by_adam``).

    Chain: ``scale_by_galore(rank, update_proj_gap, scale, scale_by_adam(betas, eps)) →
    add_decayed_weights → scale_by_learning_rate`` (decoupled decay in the full space, scaled by
    the learning rate); see :func:`~functional_optim.transforms.scale_by_galore` (which leaves
    are projected, the SVD's precision, the refresh on the host).

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        betas: Adam's ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: Adam's ``ε`` (default 1e-8).
        weight_decay: ``λ`` (default 0).
        scale: ``s``, the projected-back update's scale (default 1).
        rank: the projection's rank (structural; default 128).
        update_proj_gap: updates between projector refreshes (structural; default 200).
        weight_dimension_numbers: which leaves are matrices (structural).
        svd_dtype: the SVD's precision (structural; default float32).
        host_refresh: decide the refresh on the host (structural).
    """
    owner = "galore_adamw"
    block = scale_by_galore(rank, update_proj_gap, scale, scale_by_adam(betas, eps),
                            weight_dimension_numbers, svd_dtype=svd_dtype,
                            host_refresh=host_refresh)
    blocks = _decay_around(owner, lr, weight_decay, False, True, "galore", block)
    defaults = dict(lr=_lr_of(blocks), betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                    scale=scale)

    def to_inner(h):
        return {"galore": {"scale": h["scale"], "base_optimizer": {
                    "betas": h["betas"], "eps": h["eps"], "eps_root": 0.0}},
                "lr": {"lr": h["lr"]}, "weight_decay": {"weight_decay": h["weight_decay"]}}

    structural = dict(rank=rank, update_proj_gap=update_proj_gap,
                      weight_dimension_numbers=weight_dimension_numbers, svd_dtype=svd_dtype,
                      host_refresh=host_refresh)
    return _lr_folded(owner, blocks, defaults, to_inner, structural)


@register(paper='Abadi et al., 2016, "Deep Learning with Differential Privacy"',
          drop_in="DPSGD", protocol=DropInProtocol(gradient="grad_sample"))
def dpsgd(lr: float | torch.Tensor = 1e-3, l2_norm_clip: float = 1.0,
          noise_multiplier: float = 1.0, momentum: float | None = 0.0, nesterov: bool = False,
          *, seed: int = 0) -> Transform:
    r"""DP-SGD (Abadi et al., 2016), as optax's ``contrib.dpsgd``: SGD on the clipped, noised
    mean of per-example gradients.

    Chain: ``differentially_private_aggregate(l2_norm_clip, noise_multiplier, seed) → trace →
    scale_by_learning_rate``; ``update`` takes per-example gradients (a leading batch axis on
    every leaf; see :mod:`functional_optim.transforms.private`). A momentum of 0 (the default)
    is optax's ``momentum=None``; optax's momentum ``μ`` is :func:`~functional_optim.trace`'s.

    The drop-in class ``functional_optim.optim.DPSGD`` steps on each parameter's
    ``p.grad_sample`` (Opacus's ``GradSampleModule`` attaches them) and its ``zero_grad``
    clears them.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        l2_norm_clip: the per-example clipping norm ``c`` (default 1).
        noise_multiplier: ``σ``, the noise's standard deviation over ``c`` (default 1).
        momentum: ``μ`` (default 0), or ``None`` (structural: no momentum block).
        nesterov: Nesterov momentum (structural).
        seed: the noise's stream (structural).
    """
    owner = "dpsgd"
    blocks: dict[str, Transform] = {
        "private": differentially_private_aggregate(l2_norm_clip, noise_multiplier, seed)}
    if momentum is not None:
        blocks["momentum"] = trace(momentum, 0.0, nesterov)
    blocks["lr"] = scale_by_learning_rate(lr)
    defaults = dict(lr=_lr_of(blocks), l2_norm_clip=l2_norm_clip,
                    noise_multiplier=noise_multiplier, momentum=momentum)

    def to_inner(h):
        inner = {"private": {"l2_norm_clip": h["l2_norm_clip"],
                             "noise_multiplier": h["noise_multiplier"]}, "lr": {"lr": h["lr"]}}
        if momentum is None:
            _no_momentum(owner, h)
        else:
            inner["momentum"] = {"momentum": h["momentum"], "dampening": 0.0}
        return inner

    return _lr_folded(owner, blocks, defaults, to_inner, dict(nesterov=nesterov, seed=seed))

"""The Kronecker-factored and eigenbasis preconditioners: SOAP, Shampoo and PSGD-Kron, each a
short chain of blocks with torch's hyperparameter names and its reference implementation's
numbers and defaults."""

from __future__ import annotations

import torch

from .. import tree as _tree
from ..base import Transform, check_hparam
from ..combinators import conditionally
from ..registry import register
from ..transforms import (
    add_decayed_weights,
    scale_by_learning_rate,
    scale_by_psgd_kron,
    scale_by_shampoo,
    scale_by_soap,
    trace,
)
from ._common import _check_lr, _lr_folded

__all__ = ["soap", "shampoo", "psgd_kron"]


def _after_first(count: torch.Tensor) -> torch.Tensor:
    return count > 0


def _matrices(params):
    """``True`` for the leaves of rank >= 2 (PSGD-Kron's reference decays only those)."""
    return _tree.map(lambda p: p.ndim >= 2, params)


@register(paper=('Vyas et al., 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"'),
          drop_in="SOAP")
def soap(lr: float | torch.Tensor = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
         shampoo_beta: float = -1.0, eps: float = 1e-8, weight_decay: float = 0.01, *,
         precondition_frequency: int = 10, max_precond_dim: int = 10000,
         merge_dims: bool = False, precondition_1d: bool = False, normalize_grads: bool = False,
         correct_bias: bool = True, precond_dtype: torch.dtype | None = torch.float32,
         host_refresh: bool = False) -> Transform:
    r"""SOAP (Vyas et al., 2024), as the authors' published ``SOAP`` class (same arguments and
    defaults, ``data_format="channels_first"``).

    Chain: ``scale_by_soap → conditionally(add_decayed_weights, from update 1) →
    scale_by_learning_rate``: the first update only builds the eigenbases (no step, no
    decay), then :math:`p \leftarrow p - \eta\,(u + \lambda p)` with :math:`u` SOAP's
    direction (:func:`~functional_optim.transforms.scale_by_soap`: which leaves are rotated,
    the decompositions' precision and their refresh on the host). The decay is decoupled and
    reads the parameters before the step, as the authors' current code and heavyball's (their
    first release decayed the stepped parameters: a difference of order :math:`\eta^2\lambda`).

    *Speed*: the default refresh (tensor selects) decomposes at every update; for eager training
    (no ``vmap``, ``torch.func`` or ``torch.compile`` of the step) ``host_refresh=True``
    decomposes only when due, several times faster (``benchmarks/results/precond_cpu.md``).

    Args:
        lr: ``η`` (default 3e-3), a number, tensor or schedule.
        betas: Adam's ``(β1, β2)`` (default ``(0.95, 0.95)``).
        shampoo_beta: the factors' decay; negative: ``β2`` (default -1).
        eps: Adam's ``ε`` (default 1e-8).
        weight_decay: ``λ`` (default 0.01).
        precondition_frequency: updates between basis refreshes (structural; default 10).
        max_precond_dim: the largest axis with a factor (structural; default 10000).
        merge_dims: merge consecutive axes first (structural).
        precondition_1d: rotate vectors too (structural).
        normalize_grads: divide each leaf's step by its RMS (structural).
        correct_bias: Adam's bias correction (structural; default True).
        precond_dtype: the decompositions' precision (structural; default float32).
        host_refresh: decide the decompositions on the host (structural).
    """
    owner = "soap"
    _check_lr(owner, lr)
    block = scale_by_soap(betas, shampoo_beta, eps,
                          precondition_frequency=precondition_frequency,
                          max_precond_dim=max_precond_dim, merge_dims=merge_dims,
                          precondition_1d=precondition_1d, normalize_grads=normalize_grads,
                          correct_bias=correct_bias, precond_dtype=precond_dtype,
                          host_refresh=host_refresh)
    blocks = {"soap": block,
              "weight_decay": conditionally(add_decayed_weights(weight_decay),
                                            predicate=_after_first, otherwise="identity"),
              "lr": scale_by_learning_rate(lr)}
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas),
                    shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay)

    def to_inner(h):
        return {"soap": {"betas": h["betas"], "shampoo_beta": h["shampoo_beta"], "eps": h["eps"]},
                "weight_decay": {"weight_decay": h["weight_decay"]}, "lr": {"lr": h["lr"]}}

    structural = dict(precondition_frequency=precondition_frequency,
                      max_precond_dim=max_precond_dim, merge_dims=merge_dims,
                      precondition_1d=precondition_1d, normalize_grads=normalize_grads,
                      correct_bias=correct_bias, precond_dtype=precond_dtype,
                      host_refresh=host_refresh)
    return _lr_folded(owner, blocks, defaults, to_inner, structural)


@register(paper=('Gupta, Koren & Singer, 2018, "Shampoo: Preconditioned Stochastic Tensor '
                 'Optimization"; Anil et al., 2020, "Scalable Second Order Optimization for Deep '
                 'Learning"'), drop_in="Shampoo")
def shampoo(lr: float | torch.Tensor = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
            beta2: float = 0.999, eps: float = 1e-12, graft_beta2: float = 0.999,
            graft_eps: float = 1e-8, *, nesterov: bool = False, block_size: int = 128,
            precondition_frequency: int = 1, start_preconditioning_step: int = 1,
            inverse_exponent: int | None = None, merge_small_dims: bool = True,
            graft: str = "adam", root_dtype: torch.dtype | None = torch.float64,
            root_method: str = "eigh", root_iterations: int = 50,
            host_refresh: bool = False) -> Transform:
    r"""Shampoo with grafting, blocking and merged dimensions (Gupta et al., 2018; Anil et al.,
    2020), as the authors' PyTorch ``Shampoo`` (``scalable_shampoo/pytorch``) orders its
    step, with one momentum buffer and grafting onto Adam's norm by default (as
    ``distributed_shampoo``'s recipe: take the learning rate of the Adam it replaces).

    Chain: ``scale_by_shampoo → add_decayed_weights → trace(momentum, nesterov) →
    scale_by_learning_rate``: the grafted direction (the grafting method's own step before
    ``start_preconditioning_step``; see
    :func:`~functional_optim.transforms.scale_by_shampoo`), plus :math:`\lambda p` (L2 after
    grafting, as the authors'), heavy-ball momentum :math:`m \leftarrow \mu m + u` (Nesterov:
    :math:`\mu m + u`), times :math:`\eta`.

    *Speed*: the default refresh (tensor selects) computes the roots at every update; for eager
    training ``host_refresh=True`` computes them only when due, several times faster
    (``benchmarks/results/precond_cpu.md``); ``root_method="newton"`` makes the step
    CUDA-graph capturable.

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        momentum: ``μ`` (default 0.9).
        weight_decay: ``λ`` (default 0).
        beta2: the statistics' decay (default 0.999; 1: sums).
        eps: added to the statistics' eigenvalues before the root (default 1e-12).
        graft_beta2: Adam grafting's ``β2`` (default 0.999).
        graft_eps: the grafting's ``ε`` (default 1e-8).
        nesterov: Nesterov momentum (structural).
        block_size: the largest block and merged size (structural; default 128).
        precondition_frequency: updates between roots (structural; default 1).
        start_preconditioning_step: the first preconditioned update, from 1 (structural).
        inverse_exponent: the roots' ``p`` (structural; default ``None``: twice the rank).
        merge_small_dims: merge small consecutive axes (structural; default True).
        graft: ``"adam"``, ``"adagrad"``, ``"sgd"`` or ``"none"`` (structural).
        root_dtype: the roots' precision (structural; default float64).
        root_method: ``"eigh"`` or ``"newton"`` (capturable) (structural).
        root_iterations: the Newton steps (structural; default 50).
        host_refresh: decide the roots on the host (structural).
    """
    owner = "shampoo"
    _check_lr(owner, lr)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    block = scale_by_shampoo(beta2, eps, graft_beta2, graft_eps, block_size=block_size,
                             precondition_frequency=precondition_frequency,
                             start_preconditioning_step=start_preconditioning_step,
                             inverse_exponent=inverse_exponent,
                             merge_small_dims=merge_small_dims, graft=graft,
                             root_dtype=root_dtype, root_method=root_method,
                             root_iterations=root_iterations, host_refresh=host_refresh)
    blocks = {"shampoo": block, "weight_decay": add_decayed_weights(weight_decay),
              "momentum": trace(momentum, 0.0, nesterov), "lr": scale_by_learning_rate(lr)}
    defaults = dict(lr=blocks["lr"].hparams["lr"], momentum=momentum,
                    weight_decay=weight_decay, beta2=beta2, eps=eps, graft_beta2=graft_beta2,
                    graft_eps=graft_eps)

    def to_inner(h):
        return {"shampoo": {k: h[k] for k in ("beta2", "eps", "graft_beta2", "graft_eps")},
                "weight_decay": {"weight_decay": h["weight_decay"]},
                "momentum": {"momentum": h["momentum"], "dampening": 0.0},
                "lr": {"lr": h["lr"]}}

    structural = dict(nesterov=nesterov, block_size=block_size,
                      precondition_frequency=precondition_frequency,
                      start_preconditioning_step=start_preconditioning_step,
                      inverse_exponent=inverse_exponent, merge_small_dims=merge_small_dims,
                      graft=graft, root_dtype=root_dtype, root_method=root_method,
                      root_iterations=root_iterations, host_refresh=host_refresh)
    return _lr_folded(owner, blocks, defaults, to_inner, structural)


@register(paper='Li, 2018, "Preconditioned Stochastic Gradient Descent"', drop_in="PSGDKron")
def psgd_kron(lr: float | torch.Tensor = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
              preconditioner_update_probability: float = 1.0, precond_lr: float = 0.1, *,
              max_size_triangular: int = 2048, min_ndim_triangular: int = 2,
              memory_save_mode: str | None = None, momentum_into_precond_update: bool = True,
              precond_init_scale: float = 1.0, precond_dtype: torch.dtype | None = None,
              seed: int = 0) -> Transform:
    r"""PSGD-Kron (Li, 2018), as ``kron_torch``'s ``Kron`` (same arguments and defaults, but a
    constant update probability by default). Its default annealing,
    :math:`\min(1, \max(0.03, e^{-0.001 (n - 500)}))` at step :math:`n` (from 0), is a live
    value injected from a schedule::

        import math
        anneal = fo.schedules.exponential_decay(1.0, 1, math.exp(-0.001),
                                                transition_begin=500, end_value=0.03)
        tx = fo.inject_hparams(fo.psgd_kron(lr=1e-3),
                               {"preconditioner_update_probability": anneal})

    Chain: ``scale_by_psgd_kron → add_decayed_weights (leaves of rank >= 2) →
    scale_by_learning_rate``: :math:`p \leftarrow p - \eta\,(u + \lambda p)` with :math:`u`
    the clipped preconditioned momentum
    (:func:`~functional_optim.transforms.scale_by_psgd_kron`: the factors, their fit and its
    randomness).

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        momentum: ``β`` (default 0.9).
        weight_decay: ``λ``, on leaves of rank >= 2 (default 0).
        preconditioner_update_probability: ``p`` (default 1).
        precond_lr: the factors' step (default 0.1).
        max_size_triangular: the largest triangular factor (structural; default 2048).
        min_ndim_triangular: the smallest rank with triangular factors (structural; 2).
        memory_save_mode: ``None``, ``"one_diag"`` or ``"all_diag"`` (structural).
        momentum_into_precond_update: fit on the momentum (structural; default True).
        precond_init_scale: the factors' initial scale (structural; default 1).
        precond_dtype: the factors' update precision (structural).
        seed: the random stream (structural).
    """
    owner = "psgd_kron"
    _check_lr(owner, lr)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    block = scale_by_psgd_kron(momentum, preconditioner_update_probability, precond_lr,
                               max_size_triangular=max_size_triangular,
                               min_ndim_triangular=min_ndim_triangular,
                               memory_save_mode=memory_save_mode,
                               momentum_into_precond_update=momentum_into_precond_update,
                               precond_init_scale=precond_init_scale,
                               precond_dtype=precond_dtype, seed=seed)
    blocks = {"psgd": block, "weight_decay": add_decayed_weights(weight_decay, mask=_matrices),
              "lr": scale_by_learning_rate(lr)}
    defaults = dict(lr=blocks["lr"].hparams["lr"], momentum=momentum, weight_decay=weight_decay,
                    preconditioner_update_probability=preconditioner_update_probability,
                    precond_lr=precond_lr)

    def to_inner(h):
        return {"psgd": {k: h[k] for k in ("momentum", "preconditioner_update_probability",
                                           "precond_lr")},
                "weight_decay": {"weight_decay": h["weight_decay"]}, "lr": {"lr": h["lr"]}}

    structural = dict(max_size_triangular=max_size_triangular,
                      min_ndim_triangular=min_ndim_triangular, memory_save_mode=memory_save_mode,
                      momentum_into_precond_update=momentum_into_precond_update,
                      precond_init_scale=precond_init_scale, precond_dtype=precond_dtype,
                      seed=seed)
    return _lr_folded(owner, blocks, defaults, to_inner, structural)

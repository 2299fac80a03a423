"""optax's Muon (``optax.contrib.muon``): Muon on the matrices, optax's AdamW on the rest, with
optax's bias-corrected momentum, normalization, ``jax`` fan layout and options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import optree
import torch

from .. import tree as _tree
from ..base import Transform, chain, check_betas, check_hparam
from ..combinators import partition
from ..registry import register
from ..transforms import (
    MUON_NS_COEFFICIENTS,
    MuonDimensionNumbers,
    add_decayed_weights,
    scale_by_adam,
    scale_by_muon,
)
from ._common import _decay_around, _reparametrized

__all__ = ["optax_muon", "optax_muon_labels"]


def optax_muon_labels(params: Any) -> Any:
    """optax's default partition: ``"muon"`` for every 2-D leaf, ``"adam"`` for the others."""
    return _tree.map(lambda p: "muon" if p.ndim == 2 else "adam", params)


def _labels_of(dimension_numbers: Any, params: Any) -> Any:
    """``"muon"`` where ``dimension_numbers`` (a tree or ``params -> tree``) gives a leaf
    :class:`~functional_optim.transforms.MuonDimensionNumbers`, ``"adam"`` where ``None``."""
    specs = dimension_numbers(params) if callable(dimension_numbers) else dimension_numbers
    return optree.tree_map(lambda spec, p: "adam" if spec is None else "muon", specs, params,
                           none_is_leaf=True,
                           is_leaf=lambda x: isinstance(x, MuonDimensionNumbers))


@register(paper=('Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"; '
                 'optax\'s contrib.muon'), drop_in="OptaxMuon")
def optax_muon(lr: float | torch.Tensor = 0.02, momentum: float = 0.95, eps: float = 1e-8,
               weight_decay: float = 0.0, adam_lr: float | torch.Tensor | None = None,
               adam_betas: tuple[float, float] = (0.9, 0.999), adam_eps_root: float = 0.0,
               adam_weight_decay: float = 0.0, rms_scale: float = 0.2, *,
               nesterov: bool = True, adaptive: bool = False, match_rms: bool = False,
               ns_coefficients: Any = MUON_NS_COEFFICIENTS, ns_steps: int = 5,
               weight_decay_mask: Any = None, dimension_numbers: Any = None,
               labels: Callable[[Any], Any] | list = optax_muon_labels) -> Transform:
    r"""optax's Muon: ``partition({"muon": scale_by_muon(bias_correction, eps_added, "jax"
    layout) → add_decayed_weights(mask) → scale_by_learning_rate(lr), "adam": scale_by_adam(
    adam_betas, eps, adam_eps_root, nesterov) → add_decayed_weights → scale_by_learning_rate(
    adam_lr)}, labels)``.

    The matrices' direction is :func:`~functional_optim.transforms.scale_by_muon` with optax's
    momentum :math:`\tilde B_t = \mu B_t/(1-\mu^{t+1}) + (1-\mu) g_t/(1-\mu^t)` (Nesterov),
    the Newton-Schulz iteration in the parameters' dtype on
    :math:`\tilde B / (\lVert\tilde B\rVert_F + \epsilon)`, optional ``adaptive`` scaling by
    :math:`\langle\tilde B, O\rangle`, and the width scaling of a ``fan_in x fan_out`` matrix
    (optax's ``x W = y`` layout), :math:`\sqrt{\max(1, \text{fan\_out}/\text{fan\_in})}`, or
    with ``match_rms`` the RMS ``rms_scale`` :math:`c` (optax's ``consistent_rms``):
    :math:`c\sqrt{\max(\text{fan\_in}, \text{fan\_out})}`. The other leaves get optax's AdamW
    (``eps`` shared, Nesterov as ``nesterov``). Both weight decays are multiplied by their
    learning rate.

    Args:
        lr: Muon's ``η`` (default 0.02), a number, tensor or schedule.
        momentum: ``μ`` (optax's ``beta``; default 0.95).
        eps: ``ε`` of the normalization and of Adam (default 1e-8).
        weight_decay: Muon's ``λ`` (default 0).
        adam_lr: Adam's ``η`` (``None``: ``lr``'s value).
        adam_betas: Adam's ``(β1, β2)`` (default ``(0.9, 0.999)``).
        adam_eps_root: Adam's ``ε`` inside the root (default 0).
        adam_weight_decay: Adam's ``λ`` (default 0).
        rms_scale: the RMS matched with ``match_rms`` (optax's ``consistent_rms``; default
            0.2; no effect without ``match_rms``).
        nesterov: Nesterov momentum for both (structural; default True).
        adaptive: the dual-norm scaling (structural).
        match_rms: scale to the RMS ``rms_scale`` instead of by the width (structural).
        ns_coefficients: ``(a, b, c)`` or one per iteration (``NS_COEFFICIENTS["dion"]``).
        ns_steps: Newton-Schulz iterations (structural; the number of triples when one per
            iteration).
        weight_decay_mask: which leaves Muon's decay applies to (structural).
        dimension_numbers: a tree of
            :class:`~functional_optim.transforms.MuonDimensionNumbers` (``None`` for Adam's
            leaves) or a function ``params -> tree`` (optax's
            ``muon_weight_dimension_numbers``): Muon's leaves and their matrices (structural;
            the labels then follow from it).
        labels: ``"muon"``/``"adam"`` per leaf (structural; default: 2-D leaves are Muon's).
    """
    owner = "optax_muon"
    check_hparam(owner, "momentum", momentum, ge=0, lt=1)
    check_betas(owner, adam_betas)
    check_hparam(owner, "adam_eps_root", adam_eps_root, ge=0)
    check_hparam(owner, "rms_scale", rms_scale, ge=0)
    if adam_lr is None:
        adam_lr = lr
    if dimension_numbers is not None:
        if labels is not optax_muon_labels:
            raise ValueError(f"{owner}: give labels or dimension_numbers, not both (the labels "
                             "follow from the dimension numbers)")
        labels = functools.partial(_labels_of, dimension_numbers)
    muon_body = scale_by_muon(momentum, nesterov, ns_coefficients, eps, ns_steps,
                              "match_rms_adamw" if match_rms else None, ns_dtype=None,
                              bias_correction=True, eps_added=True, adaptive=adaptive,
                              layout="jax", rms_scale=rms_scale if match_rms else None,
                              dimension_numbers=dimension_numbers)
    muon_blocks = _decay_around(owner, lr, weight_decay, False, True, "muon", muon_body)
    muon_blocks["weight_decay"] = add_decayed_weights(weight_decay, weight_decay_mask)
    adam_blocks = _decay_around(f"{owner} (Adam)", adam_lr, adam_weight_decay, False, True,
                                "adam", scale_by_adam(adam_betas, eps, adam_eps_root,
                                                      nesterov=nesterov))
    inner = partition({"muon": chain(**muon_blocks), "adam": chain(**adam_blocks)}, labels)
    defaults = dict(lr=muon_blocks["lr"].hparams["lr"], momentum=momentum, eps=eps,
                    weight_decay=weight_decay, adam_lr=adam_blocks["lr"].hparams["lr"],
                    adam_betas=tuple(adam_betas), adam_eps_root=adam_eps_root,
                    adam_weight_decay=adam_weight_decay,
                    ns_coefficients=muon_body.hparams["ns_coefficients"], rms_scale=rms_scale)

    def to_inner(h):
        muon_h = {"momentum": h["momentum"], "ns_coefficients": h["ns_coefficients"],
                  "eps": h["eps"]}
        if match_rms:
            muon_h["rms_scale"] = h["rms_scale"]
        return {"muon": {"muon": muon_h, "weight_decay": {"weight_decay": h["weight_decay"]},
                         "lr": {"lr": h["lr"]}},
                "adam": {"adam": {"betas": h["adam_betas"], "eps": h["eps"],
                                  "eps_root": h["adam_eps_root"]},
                         "weight_decay": {"weight_decay": h["adam_weight_decay"]},
                         "lr": {"lr": h["adam_lr"]}}}

    structural = dict(nesterov=nesterov, adaptive=adaptive, match_rms=match_rms,
                      ns_steps=ns_steps, dimension_numbers=dimension_numbers,
                      weight_decay_mask=weight_decay_mask, labels=labels)
    return _reparametrized(owner, inner, defaults, to_inner, structural)

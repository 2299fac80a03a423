"""What the aliases share: validation of ``lr``, the decay placement around an algorithm's
block, the flat torch-named hyperparameters over a chain (:func:`_reparametrized`) and the
adapter's fast steps of the classic algorithms (:func:`_classic`, :func:`_lr_folded`)."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import Any

import torch

from .. import _blocked, _fused
from .._execute import is_off
from ..base import HParamError, Transform, chain, check_hparam, reparametrize
from ..transforms import add_decayed_weights, scale, scale_by_learning_rate


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


def _classic(owner: str, blocks: dict, defaults: dict, block: str, keys: tuple,
             structural: dict, lr_block: bool = True, reduce: bool = False) -> Transform:
    """``reparametrize`` a chain of ``blocks`` to torch's flat ``defaults``: ``keys`` go to
    ``blocks[block]``, ``lr`` to the learning-rate block, ``weight_decay`` to its block.

    The adapter's fast path is the chain's own rule run in place a cache-sized block at a time
    (:func:`functional_optim._blocked.rule_step`), where the rule is pointwise (``reduce``:
    or reduces over each leaf, run in passes); its pure ``update`` the rule's exact program
    (:func:`functional_optim._blocked.rule_update`)."""

    def to_inner(h):
        inner: dict = {block: {k: h[k] for k in keys},
                       "weight_decay": {"weight_decay": h["weight_decay"]}}
        if lr_block:
            inner["lr"] = {"lr": h["lr"]}
        return inner

    if not lr_block:
        tx = _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)
        if _leafwise(structural):
            return tx
        return _blocked.with_rule_steps(tx, defaults, f"{owner} hparams", reduce=reduce)
    return _lr_folded(owner, blocks, defaults, to_inner, structural, reduce)


_LEAFWISE = ("mask", "labels", "blocks", "include_in_weight_decay", "exclude_from_weight_decay",
             "dimension_numbers")
"""The construction-time options that select per leaf (a tree, or a function of the
parameters or their names): set, the rule differs from leaf to leaf."""


def _leafwise(structural: dict) -> bool:
    """Whether an option set at construction makes the rule differ from leaf to leaf (a mask,
    a partition, labels: :data:`_LEAFWISE`), so that the rule traced on one leaf is not every
    leaf's: such an alias gets no program (the chain runs)."""
    return any(v is not None and v != [] and any(k.endswith(s) for s in _LEAFWISE)
               for k, v in structural.items())


def _lr_folded(owner: str, blocks: dict, defaults: dict, to_inner, structural: dict,
               reduce: bool = False) -> Transform:
    """``reparametrize(chain(**blocks))`` whose adapter step is the chain's rule run a
    cache-sized block at a time where it is pointwise (:func:`functional_optim._blocked.
    rule_step`), else the chain with the trailing ``lr`` block folded into the parameter update
    (:func:`functional_optim._fused.lr_folded_step`)."""
    where = f"{owner} hparams"
    head = chain(**{k: b for k, b in blocks.items() if k != "lr"})
    fused = _fused.lr_folded_step(head, defaults, to_inner, where)
    tx = _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)
    if _leafwise(structural):
        return tx._replace(fused=fused)
    return _blocked.with_rule_steps(tx, defaults, where, fused, reduce=reduce)


def _number_or_tensor_lr(owner: str, lr: Any) -> None:
    if callable(lr) or not isinstance(lr, (Number, torch.Tensor)):
        raise HParamError(f"{owner}: lr must be a Python number or a 0-d tensor, got {lr!r}")
    check_hparam(owner, "lr", lr, ge=0)

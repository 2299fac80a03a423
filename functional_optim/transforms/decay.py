"""Weight decay."""

from __future__ import annotations

import functools
from collections.abc import Callable
from numbers import Number
from typing import Any

import torch

from .. import tree as _tree
from .._execute import Pointwise, PointwiseCall, is_off
from ..base import (
    EmptyState,
    Transform,
    check_hparam,
    missing_params,
    pointwise_transform,
    resolve_hparams,
)
from .basic import _identity_rule

__all__ = ["add_decayed_weights"]


def _decay_rule(h, g, p, keep=True, *, after_step=False):
    decay = h["weight_decay"]
    if not keep or is_off(decay):
        return (g,)
    if after_step:  # the stepped parameters p + u shrink by (1 - decay)
        return (g - decay * (p + g),)
    if isinstance(decay, Number):  # one fused kernel, as torch's ``grad.add(param, alpha=wd)``
        return (torch.add(g, p, alpha=decay),)
    return (g + decay * p,)


def add_decayed_weights(weight_decay: float = 0.0,
                        mask: Any | Callable[[Any], Any] | None = None, *,
                        after_step: bool = False) -> Transform:
    r"""Adds the parameters times ``weight_decay`` to the updates: :math:`u \mapsto u + \lambda p`.

    Before an adaptive scaling this is L2 regularization (torch.optim.Adam's ``weight_decay``);
    after it and before the learning rate it is decoupled weight decay (AdamW; Loshchilov &
    Hutter, 2019). Needs ``params``, unless ``weight_decay`` is the Python number 0 at update
    time: then the block passes updates through (no work, no parameters read).

    ``after_step=True`` (structural) decays the parameters *after* the step the incoming updates
    make, so the block goes after the learning rate: :math:`u \mapsto u - \lambda (p + u)`,
    i.e. :math:`p_t = (p_{t-1} + u)(1 - \lambda)`, with ``λ`` the fraction removed per step
    (HuggingFace's ``AdamW`` decays this way, by :math:`\eta\lambda`, after its Adam step).

    Args:
        weight_decay: ``λ`` (>= 0; default 0).
        mask: where to decay: a tree of bools shaped like the parameters, or a function
            ``params -> tree of bools``; ``None`` decays every leaf.
        after_step: decay the stepped parameters (static; see above).
    """
    check_hparam("add_decayed_weights", "weight_decay", weight_decay, ge=0)
    defaults = {"weight_decay": weight_decay}
    rule = functools.partial(_decay_rule, after_step=after_step)

    def init(params):
        return EmptyState()

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "add_decayed_weights hparams")
        if is_off(h["weight_decay"]) or missing_params(
                "add_decayed_weights", updates, params,
                "weight decay reads them; this block is in every alias with a weight_decay, "
                "and runs unless weight_decay is the number 0"):
            return PointwiseCall(_identity_rule, h, finish=lambda new: state, sparse=True,
                                 reads_update_once=True)
        if mask is None:
            inputs: tuple = (params,)  # (no tree of True: cheaper, and compiles)
        else:
            keep = mask(params) if callable(mask) else mask
            for i, leaf in enumerate(_tree.leaves(keep)):
                if leaf is not None and not isinstance(leaf, bool):
                    raise TypeError(
                        f"add_decayed_weights: mask leaf {_tree.leaf_label(keep, i)} must be a "
                        f"bool, got {type(leaf).__name__}"
                    )
            inputs = (params, keep)
        return PointwiseCall(rule, h, inputs=inputs, finish=lambda new: state,
                             input_names=("params", "mask")[:len(inputs)],
                             reads_update_once=not after_step)

    # torch's kernels decay before the step only
    kernel = ("decay",) if mask is None and not after_step else ()
    return pointwise_transform(init, defaults, Pointwise(prepare, "add_decayed_weights",
                                                         kernel=kernel))

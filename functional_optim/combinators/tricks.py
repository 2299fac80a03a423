r"""Wrappers that change how an optimizer decays or what it evaluates: AdamC's weight decay
scaled by the learning rate's fraction of its maximum (Defazio et al., 2025), and an exponential
moving average of the parameters with pure functions between the stepped and the evaluated
parameters."""

from __future__ import annotations

from numbers import Number
from typing import Any, NamedTuple

import optree
import torch

from .. import tree as _tree
from .._execute import LIKE, elementwise
from ..base import (
    HParamError,
    Transform,
    _check_transform,
    check_hparam,
    check_state,
    reparametrize,
    resolve_hparams,
)

__all__ = ["corrected_decay", "EmaParamsState", "ema_params", "ema_eval_params",
           "ema_train_params"]


def corrected_decay(inner: Transform, max_lr: float | torch.Tensor | None = None) -> Transform:
    r"""AdamC's corrected weight decay around any alias with flat ``lr`` and ``weight_decay``
    hyperparameters (Defazio et al., 2025, *Why Gradients Rapidly Increase Near the End of
    Training*): the decay follows the learning rate's schedule,

    .. math:: \lambda_t = \lambda\, \frac{\eta_t}{\eta_{max}}

    so that a decoupled decay (AdamW's :math:`p \leftarrow p(1 - \eta_t \lambda_t)`) keeps the
    normalized layers' steady state as the rate anneals. ``η_t`` is the ``lr`` of each step (a
    param group's, which ``torch.optim.lr_scheduler`` sets), ``η_max`` the new hyperparameter
    ``max_lr`` (default: the ``lr`` at construction, the peak of a warmup-free schedule). The
    alias :func:`~functional_optim.adamc` is ``corrected_decay(adamw(...))``.

    The hparams are ``inner``'s plus ``max_lr``. ``inner``'s ``lr`` must be a number or tensor
    (a schedule inside the alias is not the step's value: drive ``lr`` with
    :func:`~functional_optim.inject_hparams` around this wrapper instead).

    Args:
        inner: an alias (flat hparams with ``lr`` and ``weight_decay``).
        max_lr: ``η_max`` (> 0; default ``inner``'s ``lr``).
    """
    owner = "corrected_decay"
    _check_transform(inner, f"{owner}: inner")
    h = inner.hparams
    if not isinstance(h, dict) or "lr" not in h or "weight_decay" not in h:
        raise HParamError(f"{owner}: inner must have flat hparams with 'lr' and 'weight_decay' "
                          f"(an alias), got {type(h).__name__} "
                          f"{sorted(h) if isinstance(h, dict) else h!r}")
    if not isinstance(h["lr"], (Number, torch.Tensor)):
        raise HParamError(f"{owner}: inner's lr must be a number or a 0-d tensor (the step's "
                          f"value), got {h['lr']!r}; schedule it with inject_hparams around "
                          f"{owner}")
    max_lr = h["lr"] if max_lr is None else max_lr
    check_hparam(owner, "max_lr", max_lr, gt=0)
    defaults = dict(h, max_lr=max_lr)

    def to_inner(r):
        out = {k: v for k, v in r.items() if k != "max_lr"}
        out["weight_decay"] = r["weight_decay"] * (r["lr"] / r["max_lr"])
        return out

    return reparametrize(inner, defaults, to_inner, f"{owner} hparams")


class EmaParamsState(NamedTuple):
    """State of :func:`ema_params`.

    Attributes:
        delta: the parameters minus their moving average, :math:`p - \\bar p` (zeros at first:
            the average starts at the parameters).
    """

    delta: Any


def _ema_delta_rule(h, u, d):
    return u, (d + u) * h["decay"]


def ema_params(decay: float = 0.999) -> Transform:
    r"""An exponential moving average of the parameters (Polyak averaging; the "EMA weights"
    of timm's ``ModelEmaV2`` and ``torch.optim.swa_utils.get_ema_multi_avg_fn``): put it last
    in a chain (after the learning rate); it passes the updates through and tracks

    .. math:: \bar p_t = \beta \bar p_{t-1} + (1-\beta)\, p_t, \qquad \bar p_0 = p_0

    as the difference :math:`\delta_t = p_t - \bar p_t = \beta(\delta_{t-1} + u_t)` (no
    parameters read, and the map between the two sets of parameters is a pure function of the
    state each way): :func:`ema_eval_params` gives :math:`\bar p = p - \delta`,
    :func:`ema_train_params` gives back :math:`p = \bar p + \delta`. The drop-in class of
    :func:`~functional_optim.adamw_ema` swaps them in place with ``eval()`` / ``train()``.
    (:func:`~functional_optim.average_params` keeps the average itself.)

    Args:
        decay: ``β`` in [0, 1] (default 0.999).
    """
    owner = "ema_params"
    check_hparam(owner, "decay", decay, ge=0, le=1)
    defaults = {"decay": decay}

    def init(params):
        return EmaParamsState(_tree.zeros_like(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, EmaParamsState)
        out, delta = elementwise(_ema_delta_rule, h, updates, (state.delta,), name=owner,
                                 state_like=(LIKE,))
        return out, EmaParamsState(delta)

    return Transform(init, update, defaults)


def _find_ema(state: Any) -> EmaParamsState:
    found = []

    def visit(node: Any) -> Any:
        if isinstance(node, EmaParamsState):
            found.append(node)
            return None
        return node

    optree.tree_map(visit, state, is_leaf=lambda x: isinstance(x, EmaParamsState),
                    none_is_leaf=True)
    if len(found) != 1:
        raise ValueError(f"ema_params: the state must hold exactly one EmaParamsState (the "
                         f"ema_params block of the chain), found {len(found)}")
    return found[0]


def ema_eval_params(state: Any, params: Any) -> Any:
    r"""The averaged parameters :math:`\bar p = p - \delta`, from the state of any chain that
    holds one :func:`ema_params` block (pure)."""
    return _tree.map(lambda p, d: p - d, params, _find_ema(state).delta)


def ema_train_params(state: Any, eval_params: Any) -> Any:
    r"""The stepped parameters :math:`p = \bar p + \delta` back from the averaged ones (the
    inverse of :func:`ema_eval_params`; pure)."""
    return _tree.map(lambda q, d: q + d, eval_params, _find_ema(state).delta)
